"""Property tests (hypothesis): record ids are stable and unique across sources."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from finr1_core.records import make_record_id, records_to_table, table_to_records
from finr1_core.sources import SOURCES

NAMES = sorted(SOURCES)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30))
json_value = st.recursive(json_leaf, lambda ch: st.one_of(st.lists(ch, max_size=4), st.dictionaries(st.text(max_size=8), ch, max_size=4)), max_leaves=12)
rows = st.dictionaries(st.text(max_size=10), json_value, min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(NAMES), row=rows)
def test_id_is_stable_and_key_order_free(name, row):
    a = make_record_id(name, row)
    assert a == make_record_id(name, dict(reversed(list(row.items()))))
    assert a == make_record_id(name, row)
    assert a.startswith(name + "-") and len(a) == len(name) + 17


@settings(max_examples=200, deadline=None)
@given(names=st.lists(st.sampled_from(NAMES), min_size=2, max_size=2, unique=True), row=rows)
def test_same_content_different_sources_never_collide(names, row):
    assert make_record_id(names[0], row) != make_record_id(names[1], row)


@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from(NAMES), contents=st.lists(rows, min_size=2, max_size=20, unique_by=lambda r: repr(sorted(r.items(), key=repr))))
def test_distinct_content_distinct_ids(name, contents):
    from finr1_core.records import canonical_json

    distinct = {canonical_json(c) for c in contents}
    assert len({make_record_id(name, c) for c in contents}) == len(distinct)


@settings(max_examples=50, deadline=None)
@given(
    question=st.text(min_size=1, max_size=50),
    choices=st.one_of(st.none(), st.dictionaries(st.sampled_from("ABCDE"), st.text(max_size=20), min_size=1)),
    meta=st.dictionaries(st.text(max_size=8), json_leaf, max_size=4),
)
def test_records_round_trip_through_arrow(question, choices, meta):
    rec = {"id": "x-1", "repo_name": "x", "split": "train", "language": "en", "question": question, "choices": choices,
           "answer": "A", "answer_raw": "A", "answer_type": "mcq_single", "module": "金融专业知识", "math_reasoning": False, "meta": meta}
    back = table_to_records(records_to_table([rec]))[0]
    assert back["choices"] == choices and back["question"] == question
    assert back["meta"] == {str(k): v for k, v in meta.items()}
