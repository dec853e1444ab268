"""STUDY: a matrix of training runs at one budget, seeds, statistics, the comparison table."""
