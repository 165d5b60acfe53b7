"""One repository's read and write, the same in its own run, a batch or a range."""
