"""The command line: the only place that parses argv, prints, or exits."""
