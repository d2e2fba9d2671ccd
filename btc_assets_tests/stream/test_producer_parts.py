"""The producer's pure parts without Kafka: message splitting, REST rows as events, backoff, stream URLs, the emulator's REST."""

from __future__ import annotations

import json
import queue
import threading
import time

import pytest
import requests

from btc_assets.contracts import schema
from btc_assets.contracts.schema import MalformedTrade
from btc_testkit.binance_emulator import BinanceEmulator, parse_streams, websocket_accept
from btc_assets.stream.producer import (SINK_NAP_S, Backoff, event_from_historical_trade, is_server_shutdown,
                                        next_message, split_message, stream_url)

TRADE = (b'{"e":"trade","E":1743465600125,"s":"BTCUSDT","t":4711,"p":"82345.67000000",'
         b'"q":"0.00150000","T":1743465600121,"m":true,"M":true}')


def test_a_raw_stream_message_is_kept_whole():
    stream, event, value = split_message(TRADE)
    assert stream is None and value is TRADE and event[schema.EVENT_TRADE_ID] == 4711


@pytest.mark.parametrize("envelope", [
    b'{"stream":"btcusdt@trade","data":%s}',  # Binance's compact form
    b'{ "stream" : "btcusdt@trade",\n  "data" :  %s  }',  # any other spelling of the same JSON
    b'{"data":%s,"stream":"btcusdt@trade"}',
])
def test_a_combined_stream_message_yields_the_data_object_bytes_as_received(envelope):
    stream, event, value = split_message(envelope % TRADE)
    assert stream == "btcusdt@trade" and value == TRADE and event == json.loads(TRADE)


@pytest.mark.parametrize("message", [TRADE[:40], b'{"stream":"btcusdt@trade","data":' + TRADE, b"\xff\xfe", b""])
def test_what_is_not_json_is_malformed(message):
    with pytest.raises(MalformedTrade) as raised:
        split_message(message)
    assert raised.value.reason == "invalid_json"


def test_server_shutdown_is_recognised_raw_and_combined():
    assert is_server_shutdown(b'{"e":"serverShutdown","E":1770123456789}')
    assert is_server_shutdown(b'{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1770123456789}}')
    assert not is_server_shutdown(TRADE)
    assert not is_server_shutdown(b'{"e":"serverShutdown"')


def test_a_historical_trade_becomes_a_websocket_event():
    row = {"id": 4712, "price": "82345.68000000", "qty": "0.01000000", "quoteQty": "823.45680000",
           "time": 1743465600121, "isBuyerMaker": False, "isBestMatch": True}
    event = event_from_historical_trade("BTCUSDT", row)
    assert json.dumps(event, separators=(",", ":")) == (
        '{"e":"trade","E":1743465600121,"s":"BTCUSDT","t":4712,"p":"82345.68000000",'
        '"q":"0.01000000","T":1743465600121,"m":false,"M":true}')
    trade = schema.trade_from_event(event)
    assert (trade.trade_id, trade.price, trade.is_buyer_maker) == (4712, "82345.68000000", False)


def test_backoff_is_exponential_with_full_jitter_capped_and_reset():
    backoff = Backoff(first_s=1.0, cap_s=60.0)
    ceilings = [1, 2, 4, 8, 16, 32, 60, 60]
    for ceiling in ceilings:
        delays = []
        for _ in range(200):
            backoff.attempt = ceilings.index(ceiling)
            delays.append(backoff.next_delay())
        assert 0.0 <= min(delays) and max(delays) <= ceiling
        assert max(delays) > ceiling * 0.8  # the whole window is used: full jitter
    backoff.reset()
    assert backoff.attempt == 0 and backoff.next_delay() <= 1.0


def test_one_symbol_uses_a_raw_stream_several_a_combined_one():
    assert stream_url("wss://stream.binance.com:9443", ["BTCUSDT"]) == "wss://stream.binance.com:9443/ws/btcusdt@trade"
    assert stream_url("wss://stream.binance.com:9443/", ["BTCUSDT", "ETHUSDT"]) == \
        "wss://stream.binance.com:9443/stream?streams=btcusdt@trade/ethusdt@trade"


def test_emulator_stream_urls_and_handshake():
    assert parse_streams("/ws/btcusdt@trade", "", ("BTCUSDT",)) == (("BTCUSDT",), False)
    assert parse_streams("/stream", "streams=btcusdt@trade/ethusdt@trade", ("BTCUSDT", "ETHUSDT")) == \
        (("BTCUSDT", "ETHUSDT"), True)
    assert parse_streams("/ws/xrpusdt@trade", "", ("BTCUSDT",)) is None
    assert websocket_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455's example


def test_emulator_rest_serves_historical_trades_like_binance():
    with BinanceEmulator(("BTCUSDT",), trades=3_000, seed=9) as binance:
        binance._emit(3_000)  # the market, without waiting for a client
        ids = binance.generated_ids("BTCUSDT")
        url = binance.base_url + "/api/v3/historicalTrades"
        rows = requests.get(url, params={"symbol": "BTCUSDT", "fromId": ids[100], "limit": 1000}, timeout=5).json()
        assert [row["id"] for row in rows] == ids[100:1100]
        event = binance.event("BTCUSDT", ids[100])
        assert rows[0]["price"] == event["p"] and rows[0]["qty"] == event["q"] and rows[0]["time"] == event["T"]
        assert float(rows[0]["quoteQty"]) == pytest.approx(float(event["p"]) * float(event["q"]), abs=1e-8)
        latest = requests.get(url, params={"symbol": "BTCUSDT", "limit": 5}, timeout=5).json()
        assert [row["id"] for row in latest] == ids[-5:]
        assert requests.get(url, params={"symbol": "NOPE"}, timeout=5).status_code == 400
        requests.post(binance.base_url + "/control/rest?status=503", timeout=5).raise_for_status()
        assert requests.get(url, params={"symbol": "BTCUSDT"}, timeout=5).status_code == 503


def test_emulator_warmup_opens_the_market_in_the_past_then_runs_in_real_time():
    import websocket

    with BinanceEmulator(("BTCUSDT",), rate=200, seed=12, warmup_seconds=600, warmup_rate=40,
                         first_trade_id=5_000_000) as binance:
        opened = time.time() * 1000
        client = websocket.create_connection(binance.ws_url + "/ws/btcusdt@trade", timeout=30)
        try:
            events = []
            while not events or events[-1]["T"] < time.time() * 1000 - 500:  # the past, until it meets the clock
                events.append(json.loads(client.recv()))
            caught_up = len(events)
            for _ in range(200):
                events.append(json.loads(client.recv()))
            finished = time.time() * 1000
        finally:
            client.close()
    times = [event["T"] for event in events]
    ids = [event["t"] for event in events]
    assert ids == list(range(5_000_000, 5_000_000 + len(ids)))  # the first id as asked, +1 per trade
    assert times == sorted(times)
    assert opened - 600_000 <= times[0] < opened - 590_000  # ten minutes ago
    # ~40 trades a second of that past: a minute bar for every one of the ten minutes.
    assert 600 * 40 * 0.9 < caught_up < 600 * 40 * 1.1
    assert len({moment // 60_000 for moment in times[:caught_up]}) >= 10
    # Then the wall clock at 200 trades/s: the last 200 trades are about a second of real time.
    live = times[-200:]
    assert finished - 5_000 <= live[0] and live[-1] <= finished
    assert live[-1] - live[0] >= 500


def test_emulator_clock_trade_ids_rise_across_restarts():
    from btc_testkit.binance_emulator import clock_trade_id

    first = clock_trade_id(1_764_580_000)
    assert clock_trade_id(1_764_580_001) - first == 100_000  # a run of a second at up to 100,000 trades/s
    assert clock_trade_id() > first


def test_emulator_endless_market_continues_its_price_across_generated_days():
    from btc_testkit import binance_emulator as emulator

    scale = emulator.endless_price_scale(300, 1)  # a generated day's 100,000 trades last 5.6 minutes at 300/s
    assert scale == pytest.approx((emulator.ENDLESS_CHUNK / 300 / 86_400) ** 0.5)
    tape = emulator._tape("BTCUSDT", "2025-04-01", 0, None, 1, scale)
    prices = [float(next(tape)[schema.EVENT_PRICE]) for _ in range(emulator.ENDLESS_CHUNK + 2_000)]
    assert all(price == round(price, 2) for price in prices)  # still on BTC's 0.01 tick
    boundary = emulator.ENDLESS_CHUNK
    assert abs(prices[boundary] / prices[boundary - 1] - 1) < 5e-4  # the next day goes on from the last price
    # Over the 5.6 minutes of a generated day, moves of minutes, not of a day (~2.5 %).
    assert max(prices[:boundary]) / min(prices[:boundary]) < 1.01
    asked = emulator._tape("BTCUSDT", "2025-04-01", 0, None, 1, lambda: scale)  # the emulator asks per day
    assert [float(next(asked)[schema.EVENT_PRICE]) for _ in range(1_000)] == prices[:1_000]
    # The warm-up's rate gives its generated day the volatility of the longer time it lasts.
    with BinanceEmulator(("BTCUSDT",), rate=300, warmup_seconds=60, warmup_rate=50) as binance:
        assert binance._price_scale() == emulator.endless_price_scale(50, 1) > scale
    unscaled = emulator._tape("BTCUSDT", "2025-04-01", 0, None, 1, 1.0)
    first_day = [float(next(unscaled)[schema.EVENT_PRICE]) for _ in range(boundary)]
    assert max(first_day) / min(first_day) > max(prices[:boundary]) / min(prices[:boundary])


def test_emulator_makes_no_trade_once_pause_returns():
    """``pause()`` returning means the market has stopped: a test that reads ``generated_ids`` right after it has
    the last trade (before, a batch the market loop had already decided on was made after the pause)."""
    import threading

    import websocket

    with BinanceEmulator(("BTCUSDT",), rate=0, seed=14) as binance:  # as fast as the client reads
        client = websocket.create_connection(binance.ws_url + "/ws/btcusdt@trade", timeout=30)
        reading = threading.Event()
        reading.set()

        def drain() -> None:
            while reading.is_set():
                try:
                    client.recv()
                except Exception:  # noqa: BLE001 - closed at the end
                    return

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            late = []
            for _ in range(60):
                binance.resume()
                time.sleep(0.01)
                binance.pause()
                paused_at = binance.generated_ids("BTCUSDT")[-1]
                time.sleep(0.02)
                if (after := binance.generated_ids("BTCUSDT")[-1]) != paused_at:
                    late.append(after - paused_at)
            assert len(binance.generated_ids("BTCUSDT")) > 60 * 256  # the market did trade between the pauses
            assert not late, f"trades made after pause() returned, in {len(late)} of 60 pauses: {late[:10]}"
        finally:
            reading.clear()
            client.close()


class _CountingQueue(queue.Queue):
    """A real queue that counts the takes that found an item at once and the ones that waited for a put."""

    def __init__(self, maxsize: int):
        super().__init__(maxsize)
        self.at_once = self.waited = 0

    def get(self, block=True, timeout=None):
        if block:
            self.waited += 1
        item = super().get(block, timeout)
        self.at_once += not block
        return item


@pytest.mark.parametrize("nap_s", [SINK_NAP_S, 0.0])
def test_the_sink_takes_every_message_once_in_order_from_bursts_gaps_and_a_full_queue(nap_s):
    """The sink's take (a nap on an empty queue before it blocks, so a fast feed does not wake it per message) loses,
    repeats and reorders nothing, whether the message was queued, arrived during the nap or after a longer wait."""
    messages = _CountingQueue(maxsize=300)  # smaller than a burst: the feed waits on a full queue too
    end = object()
    sent = list(range(30_000))

    def feed() -> None:
        for burst, start in enumerate(range(0, len(sent), 1000)):
            for index in range(start, start + 1000):
                messages.put(sent[index])
                if index % 97 == 0:
                    time.sleep(0.0001)  # shorter than the nap: arrives while the sink naps
            time.sleep(0.01 if burst % 3 == 0 else 0.0)  # longer than the nap: the sink blocks on the queue
        messages.put(end)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    taken = []
    while (item := next_message(messages, nap_s)) is not end:
        taken.append(item)
    feeder.join(10)
    assert taken == sent
    assert messages.at_once > 0 and messages.waited > 0  # both ways of taking were exercised
