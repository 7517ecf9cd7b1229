"""The run directory: its layout, the stage runner, atomic writes, logs, the report, deletion inside declared roots, the run lock."""
