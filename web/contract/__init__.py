"""One API contract: request models (validated by the routes), response models, and the OpenAPI document
generated from them. See web/contract/requests.py for the limits."""
from .requests import *  # noqa: F401,F403
from .validate import Refusal, validate, validate_form, validate_query  # noqa: F401
