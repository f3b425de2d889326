"""The Ray execution plane: the driver process kcd supervises, and what the two say."""
