"""The suite's deprecation policy, beside pytest.ini's warning filters (issue 21, item 8).

pytest.ini turns the DeprecationWarnings and FutureWarnings of flwr, streamlit, torch and opacus into errors.
Flower, though, announces its deprecations in its log (``flwr.supercore.logger.warn_deprecated_feature``:
"DEPRECATED FEATURE: ..."), not as Python warnings. This hook re-raises each such log record of a test as a
DeprecationWarning from module ``flwr`` once the test has run, where pytest.ini's filters judge it like any
other: an error, so a test that calls a deprecated Flower API fails.
"""

import logging
import warnings
from collections.abc import Iterator

import pytest

FLOWER_LOGGER = "flwr"
FLOWER_DEPRECATION = "DEPRECATED FEATURE"


class _Deprecations(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).lstrip().startswith(FLOWER_DEPRECATION):
            self.records.append(record)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    handler = _Deprecations()
    logger = logging.getLogger(FLOWER_LOGGER)
    logger.addHandler(handler)
    try:
        result = yield
    finally:
        logger.removeHandler(handler)
    for record in handler.records:
        warnings.warn_explicit(
            record.getMessage().split("\n")[0], DeprecationWarning, record.pathname, record.lineno, module="flwr"
        )
    return result
