"""Machinery the node modules share, each module named for what it is; none of them defines a node."""
