"""Helpers every stage uses: the subprocess runner, the cache and its locks, publishing finished files."""
