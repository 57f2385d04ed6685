"""The report's error for options it cannot honour.

:class:`ReportError` lives apart from :mod:`results.sections` and :mod:`results.multiplier` so that
both (and the command line, which turns it into a usage error) import it from one place without
importing each other for it.
"""

from __future__ import annotations


class ReportError(ValueError):
    """A report option that cannot be honoured (bad selector, unknown column...)."""
