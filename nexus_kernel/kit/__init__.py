"""What plugin authors use: standard hooks, dataset readers, and the test kit (a pytest plugin)."""
