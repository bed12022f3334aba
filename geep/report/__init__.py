"""`geep report`: a profile's run files to its CSV, tables and plots."""
