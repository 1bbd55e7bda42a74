import pytest

from p2pmarket.core.money import AmountError, format_credits, parse_credits


@pytest.mark.parametrize("text,micro", [("1", 1_000_000), ("0.000001", 1), ("12.5", 12_500_000)])
def test_parse(text: str, micro: int) -> None:
    assert parse_credits(text) == micro
    assert parse_credits(format_credits(micro)) == micro


@pytest.mark.parametrize("text", ["0", "-1", "abc", "1e400", "0.0000001", "nan", "inf", ""])
def test_parse_refuses(text: str) -> None:
    with pytest.raises(AmountError):
        parse_credits(text)


def test_format() -> None:
    assert format_credits(1_500_000) == "1.5"
    assert format_credits(-2) == "-0.000002"
    assert format_credits(3_000_000) == "3"
