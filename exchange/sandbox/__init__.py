"""`gx sandbox`: the whole exchange in one process, its demo keys and the bots that trade on it."""
