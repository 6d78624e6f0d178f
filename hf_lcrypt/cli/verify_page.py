"""`hf-lcrypt verify-page`: does a Space's page pin and serve this version's published files?"""

from __future__ import annotations

import argparse

from .. import __version__
from .options import CLIError, add_command


def add_verify_page(sub: argparse._SubParsersAction) -> None:
    parser = add_command(
        sub,
        "verify-page",
        run_verify_page,
        "check that a Space's page pins the published hashes of its scripts, and serves those files",
        "Fetch the page of an hf-lcrypt app (space/app.py) and compare the Subresource Integrity hashes it "
        "declares for its modules and stylesheet, and the hashes of the files it serves, with those published "
        "in this package. A browser refuses a file that differs from the declared hash; this checks that the "
        "declared hashes are this version's. It cannot show that the server sends every visitor the same page: "
        "for real data, encrypt on your own machine with hf-lcrypt classify --url.",
    )
    parser.add_argument("url", help="address of the app, e.g. http://127.0.0.1:7860/ or https://user-space.hf.space/")


def run_verify_page(args: argparse.Namespace) -> int:
    from ..page_integrity import check_page

    checks = check_page(args.url)
    for check in checks:
        if check.ok:
            print(f"ok        {check.name}  {check.published}")
        else:
            problem = "not pinned" if check.declared is None else "DIFFERS"
            print(
                f"{problem:<9} {check.name}  published {check.published}, page {check.declared}, served {check.served}"
            )
    bad = sum(not c.ok for c in checks)
    if bad:
        raise CLIError(f"{bad} of {len(checks)} files are not the published ones: do not trust this page with a key.")
    print(f"All {len(checks)} files pinned and served as published (hf-lcrypt {__version__}).")
    return 0
