"""The domain: values, keys, versions, records and errors. No I/O."""
