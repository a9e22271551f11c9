"""The timer heap behind the proxy's housekeeping."""
from sipcore.deadlines import Deadlines


def test_keys_come_due_in_order_and_only_once():
    d = Deadlines()
    d.add("b", 20.0)
    d.add("a", 10.0)
    d.add("c", 30.0)
    assert d.pop_due(5.0) == []
    assert d.pop_due(20.0) == ["a", "b"]
    assert d.pop_due(20.0) == [] and len(d) == 1 and "c" in d


def test_add_moves_a_key_and_discard_unschedules_it():
    d = Deadlines()
    d.add("tx", 10.0)
    d.add("tx", 40.0)              # moved later: not due at 10
    d.add("gone", 5.0)
    d.discard("gone")
    assert d.pop_due(15.0) == [] and d.when("tx") == 40.0
    assert d.pop_due(40.0) == ["tx"] and len(d) == 0


def test_many_moves_do_not_grow_the_heap_without_bound():
    d = Deadlines()
    for i in range(5000):
        d.add("k", float(i))
    assert len(d._heap) <= 2 * len(d) + 1024
    assert d.pop_due(10_000.0) == ["k"]
