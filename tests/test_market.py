from p2pmarket.node.advert import HOUR_US, PriceHistory, moved


def test_time_weighted_average() -> None:
    h = PriceHistory()
    h.add(0, 100)
    h.add(HOUR_US // 2, 300)
    assert h.average(HOUR_US) == 200
    assert h.average(HOUR_US // 2) == 100


def test_old_samples_leave_the_window() -> None:
    h = PriceHistory()
    h.add(0, 1000)
    h.add(10, 10)
    h.add(2 * HOUR_US, 10)
    assert h.average(2 * HOUR_US + 5) == 10
    assert len(h.samples) <= 2


def test_moved() -> None:
    assert moved(100, 111, 100_000)
    assert not moved(100, 110, 100_000)
    assert moved(0, 1, 100_000)
    assert not moved(0, 0, 100_000)


def test_availability_counts_uptime_across_restarts() -> None:
    from p2pmarket.node.advert import Availability

    a = Availability.resume(None, 0)
    assert a.ppm(0) == 1_000_000
    assert a.ppm(10) == 1_000_000
    doc = a.to_doc(10)                 # ran 10 µs, then was down 30 µs
    b = Availability.resume(doc, 40)
    assert b.ppm(40) == 250_000         # 10 up of 40
    assert b.ppm(60) == 500_000         # 30 up of 60
