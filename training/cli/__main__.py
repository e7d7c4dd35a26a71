"""`python -m training.cli`: the same as `rewards`."""

from training.cli.app import main

main()
