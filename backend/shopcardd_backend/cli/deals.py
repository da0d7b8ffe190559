"""The operator's commands on one deal: ``deal rebuild`` (after the claim gate lost it) and ``stats``."""

from __future__ import annotations

import argparse

from shopcardd_commands.commandline import CommandParser

from .common import CommandError, deal_id, load_settings


def add_commands(sub: argparse._SubParsersAction[CommandParser]) -> None:
    """The ``deal`` and ``stats`` subcommands and their options."""
    deal = sub.add_parser("deal", help="operator actions on deals")
    deal_sub = deal.add_subparsers(dest="deal_command", required=True, metavar="ACTION")
    rebuild = deal_sub.add_parser(
        "rebuild",
        help="load a deal the claim gate lost back into it from the document store",
        description="After the claim gate lost its data (a Redis restarted empty), claims, reads and "
        "cancels of its deals answer 503 rather than risk selling more than the stock. This loads "
        "the deal back with every voucher issued on it that the backend still knows: those in the "
        "document store plus the claim events still waiting in the outbox (stock left = stock - "
        "vouchers, per-user counts and replays from them, cancelled if the store says so), and "
        "prints both counts. Claim events already relayed to RabbitMQ but not yet stored by the "
        "persist worker would be missed (an undercount sells more than the stock), so with "
        "SHOPCARDD_AMQP_URL set it refuses while the persist queue holds messages, or cannot be "
        "read, unless --force is given. A deal the gate still holds is left alone.",
    )
    rebuild.add_argument("deal_id", type=deal_id, metavar="DEAL", help="the deal's id")
    rebuild.add_argument(
        "--force",
        action="store_true",
        help="rebuild even though the persist queue holds messages or cannot be read (you checked "
        "that none are of this deal)",
    )

    stats = sub.add_parser(
        "stats",
        help="print a deal's figures as a table",
        description="A deal's figures for the terminal: its status and stock left, vouchers issued "
        "and redeemed, the notices sent to its customers (and refused) per channel, and per minute "
        "(UTC) the claims issued and refused by reason with the stock left after that minute. The "
        "per-minute claims issued are the vouchers the persist worker stored, the refusals the analytics "
        "worker's counts and the notices the notify worker's: a claim shows once its event has been "
        "through the queue.",
    )
    stats.add_argument("deal_id", type=deal_id, metavar="DEAL", help="the deal's id")


def cmd_deal_rebuild(args: argparse.Namespace) -> int:
    from ..deals import DealNotFound, RebuildRefused
    from ..runtime import Runtime

    deal_id = args.deal_id
    with Runtime(load_settings()) as runtime:
        try:
            report = runtime.deals.rebuild(deal_id, force=args.force)
        except DealNotFound:
            raise CommandError(f"no deal {deal_id!r} in the document store") from None
        except RebuildRefused as exc:
            raise CommandError(str(exc)) from None
    if not report.rebuilt:
        print(f"deal {deal_id} is still in the claim gate with {report.stock_left} vouchers left; left alone")
        return 0
    print(
        f"deal {deal_id} is in the claim gate with {report.stock_left} vouchers left "
        f"({report.in_store} vouchers in the store, {report.in_outbox_only} more still in the outbox)"
    )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from ..deals import DealNotFound
    from ..runtime import Runtime
    from ..stats import deal_figures
    from ..stores.base import CLAIM_COUNTS

    with Runtime(load_settings()) as runtime:
        deal = runtime.store.get_deal(args.deal_id)
        if deal is None:
            raise CommandError(f"no deal {args.deal_id!r} in the document store")
        try:
            figures = deal_figures(runtime.deals, deal.deal_id, deal.merchant_id)
        except DealNotFound:
            raise CommandError(f"no deal {args.deal_id!r} in the document store") from None
    view = figures.view
    print(f"deal {deal.deal_id} ({deal.merchant_id}): {deal.title}")
    print(
        f"status {view.phase}, stock {deal.stock}, left {view.stock_left}, "
        f"vouchers issued {figures.vouchers.issued}, redeemed {figures.vouchers.redeemed}"
    )
    sent = "; ".join(
        f"{channel} sent {counts.sent}, refused {counts.refused}"
        for channel, counts in figures.stats.notices.items()
    )
    print(f"notices {sent}")
    headers = ("minute (UTC)", *CLAIM_COUNTS, "stock_left")
    rows = [
        (minute.minute.strftime("%Y-%m-%d %H:%M"), *(getattr(minute, n) for n in CLAIM_COUNTS), left)
        for minute, (_, left) in zip(figures.stats.minutes, figures.stock_curve, strict=True)
    ]
    rows.append(("total", *(figures.stats.totals[n] for n in CLAIM_COUNTS), view.stock_left))
    widths = [max(len(str(row[i])) for row in (headers, *rows)) for i in range(len(headers))]
    for row in (headers, *rows):
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)))
    return 0
