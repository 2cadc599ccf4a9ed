"""The table's stream: change events, their publishing, cache repair, history and expiry upkeep."""
