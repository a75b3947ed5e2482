"""Serving: the node predicts on its live feature window and publishes the result on the home broker."""
