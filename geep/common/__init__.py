"""What every layer of the suite uses: the error users see, run settings, files and the cache,
JSON checks, free memory and whether the hub is reachable."""
