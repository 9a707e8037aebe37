"""The command line: `cdc generate/judge/erase/evaluate/attack/sweep` (argument parsing and file handling)."""
