"""`pibake bench`: timed steps of the pipeline, their table, JSON and chart."""
