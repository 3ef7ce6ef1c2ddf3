"""Who it is: the gallery of enrolled photos, matching, and enrollment."""
