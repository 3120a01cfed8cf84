"""The `metacl` command line. Each subcommand lives in its own module with a `register()`."""
