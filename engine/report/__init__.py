"""Reports: the text blocks, tables and files a user reads after a run."""
