"""What `geep train` and `geep evaluate` do: a dataset to a checkpoint, a checkpoint to the rows
of a sweep."""
