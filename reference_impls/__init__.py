"""Reference models, the reference greedy decoder, and the baseline and peer engines."""
