"""Reproduction: profiles, their benchmark units and run files, what a profile costs before it
runs (`geep plan`), and the GPU check."""
