"""Subcommands of `cdc` that live outside cdc/cli.py (each module adds its parser and runs it)."""
