"""Teachers: the CSV registry, loading, demo builds, fingerprints, removal for stage 5 and the read guard."""
