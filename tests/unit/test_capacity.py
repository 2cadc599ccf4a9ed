"""The item sizes and write units the benchmark's capacity table is computed with (DynamoDB's rules)."""

from benchmarks.capacity import item_size, wcu


def test_item_size_counts_names_and_values_as_dynamodb_does():
    # Names in UTF-8, strings in UTF-8, binary as is, numbers ~1 byte per two significant digits + 1.
    item = {"pk": {"S": "ké"}, "v": {"B": b"\x00" * 10}, "n": {"N": "12345"}, "d": {"BOOL": True}}
    assert item_size(item) == (2 + 3) + (1 + 10) + (1 + 4) + (1 + 1)
    assert item_size({"m": {"M": {"a": {"S": "xy"}}}}) == 1 + 3 + (1 + 2 + 1)


def test_a_write_unit_is_one_started_kilobyte_and_at_least_one():
    assert [wcu(0), wcu(1), wcu(1024), wcu(1025), wcu(350_000)] == [1, 1, 1, 2, 342]
