"""DynamoDB: the state items, their history, large values' blobs, and the time budget of a call."""
