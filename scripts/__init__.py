"""Operator and developer tools (cluster runner, config generators); not part of the installed package."""
