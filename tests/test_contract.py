"""One API contract (issue 17): the OpenAPI document is generated from the request/response models in web/contract,
it is a valid OpenAPI 3.1 document, every route the app serves is in it, the limits it states are the ones the code
enforces, and it names each CAD model's parameters so that a body formed from it alone is a valid edit."""
from __future__ import annotations

import re

import jsonschema
import pytest

from tests.test_hardening import client  # noqa: F401  (a fixture: the test client of this module's app)
from tests.test_security import app  # noqa: F401  (a fixture)
from web.contract import requests as rq
from web.contract.paths import REQUEST_MODELS
from web.openapi import spec

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def _key(path: str) -> str:
    return re.sub(r"<(?:\w+:)?\w+>|\{\w+\}", "{}", path)


def component(doc: dict, name: str) -> dict:
    return doc["components"]["schemas"][name]


def conforms(doc: dict, name: str, instance) -> None:
    """`instance` validates against components/schemas/`name` (refs resolved within the document)."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(instance)


def test_the_document_is_a_valid_openapi_document(client):
    from openapi_spec_validator import validate

    doc = client.get("/api/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    validate(doc)
    validate(spec())  # the app-independent document (generic parameters) too
    other = next(m["name"] for m in client.get("/api/models").get_json()["models"] if m["name"] != "rover")
    validate(client.get(f"/api/models/{other}/openapi.json").get_json())


def test_every_route_and_method_of_the_app_is_documented(app):
    doc = spec(app)
    described = {(m.upper(), _key(p)) for p, ops in doc["paths"].items() for m in ops}
    described |= {(m, "/api/model.{}") for m, p in described if p.startswith("/api/model.")}
    missing = [(m, r.rule) for r in app.url_map.iter_rules() for m in sorted(r.methods & METHODS)
               if (m, _key(r.rule)) not in described]
    assert not missing, missing


def test_the_limits_in_the_document_are_the_ones_the_code_enforces(client):
    from vlm.dataset import MAX_REASON_CHARS
    from vlm.images import MAX_IMAGES
    from web import optimise_api

    doc = client.get("/api/openapi.json").get_json()
    reject = component(doc, "RejectRequest")["properties"]["reason"]
    assert {"type": "string", "maxLength": MAX_REASON_CHARS} in reject["anyOf"]
    vlm = component(doc, "VlmRequest")["properties"]
    assert vlm["prompt"]["maxLength"] == rq.MAX_PROMPT_CHARS and vlm["images"]["maxItems"] == MAX_IMAGES
    assert vlm["max_new_tokens"]["maximum"] == rq.MAX_NEW_TOKENS and vlm["temperature"]["maximum"] == 2.0
    assert component(doc, "OptimiseRequest")["properties"]["max_steps"]["maximum"] == optimise_api.MAX_OPTIMISE_STEPS
    size = next(p for p in doc["paths"]["/api/render.png"]["get"]["parameters"] if p["name"] == "size")
    assert size["schema"]["maximum"] == rq.MAX_RENDER_SIZE
    # ... and the server answers at those limits as the document says
    r = client.post("/api/vlm", json={"prompt": "x" * (rq.MAX_PROMPT_CHARS + 1)})
    assert r.status_code == 422 and r.get_json()["error"] == "prompt_too_long"
    assert str(rq.MAX_PROMPT_CHARS) in r.get_json()["message"]
    r = client.get("/api/render.png", query_string={"size": rq.MAX_RENDER_SIZE + 1})
    assert r.status_code == 422 and str(rq.MAX_RENDER_SIZE) in r.get_json()["message"]


def test_every_request_field_has_its_own_error_code_and_message():
    for model in REQUEST_MODELS + [rq.RangeResetRequest, rq.RenderQuery, rq.RangeQuery, rq.DownloadQuery]:
        assert set(model.model_fields) <= set(model.refusals), model.__name__


@pytest.mark.parametrize("body, code", [({"values": {}}, "missing_values"), ({"values": []}, "missing_values"),
                                        ({"values": {"x": 1}, "version": "1"}, "bad_version"),
                                        ({"values": {"x": 1}, "model": "x" * 101}, "bad_model")])
def test_a_body_the_document_forbids_is_a_json_400_in_the_api_words(client, body, code):
    r = client.patch("/api/params", json=body)
    assert r.status_code == 400 and r.get_json()["error"] == code
    assert "pydantic" not in r.get_json()["message"] and "validation error" not in r.get_json()["message"]


def test_the_document_names_the_parameters_so_a_body_formed_from_it_is_a_valid_edit(client):
    doc = client.get("/api/openapi.json").get_json()
    state = client.get("/api/params").get_json()
    values = component(doc, "ParameterValues")
    assert values["additionalProperties"] is False
    assert set(values["properties"]) == {p["name"] for p in state["schema"]}
    assert component(doc, "ParameterName")["enum"] == [p["name"] for p in state["schema"]]
    edit = {}
    for p in state["schema"]:
        prop = values["properties"][p["name"]]
        if p["type"] == "bool":
            assert prop["type"] == "boolean"
            edit[p["name"]] = not state["values"][p["name"]]
        else:
            assert (prop["minimum"], prop["maximum"]) == (p["min"], p["max"])
            edit[p["name"]] = prop["maximum"] if p["type"] == "float" else prop["minimum"]
    body = {"version": state["version"], "values": edit}
    conforms(doc, "EditRequest", body)
    r = client.patch("/api/params", json=body)
    assert r.status_code == 200, r.get_json()
    conforms(doc, "State", r.get_json())
    conforms(doc, "History", client.get("/api/history").get_json())
    conforms(doc, "Models", client.get("/api/models").get_json())


def test_each_model_has_its_own_document(client):
    models = [m["name"] for m in client.get("/api/models").get_json()["models"]]
    other = next(m for m in models if m != "rover")
    doc = client.get(f"/api/models/{other}/openapi.json").get_json()
    names = [p["name"] for p in client.get("/api/params", query_string={"model": other}).get_json()["schema"]]
    assert component(doc, "ParameterName")["enum"] == names
    assert component(doc, "ModelName")["enum"] == [other]
    model = next(p for p in doc["paths"]["/api/params"]["get"]["parameters"] if p["name"] == "model")
    assert model["required"] is True  # a request formed from it names the model its parameters belong to
    default = client.get("/api/openapi.json").get_json()
    model = next(p for p in default["paths"]["/api/params"]["get"]["parameters"] if p["name"] == "model")
    assert model["required"] is False and component(default, "ModelName")["enum"] == ["rover", ""]
    r = client.get("/api/models/nope/openapi.json")
    assert r.status_code == 404 and r.get_json()["error"] == "unknown_model"


def test_range_endpoints_use_the_number_parameter_names(client):
    doc = client.get("/api/openapi.json").get_json()
    state = client.get("/api/params").get_json()
    numbers = component(doc, "NumberParameterName")["enum"]
    assert numbers == [p["name"] for p in state["schema"] if p["type"] != "bool"]
    p = next(p for p in state["schema"] if p["type"] == "float")
    body = {"parameter": p["name"], "min": p["min"], "max": p["max"]}
    conforms(doc, "RangeRequest", body)
    with pytest.raises(jsonschema.ValidationError):  # each parameter's range ends are its script's range
        conforms(doc, "RangeRequest", {**body, "max": p["max"] + 1})
    assert client.put("/api/params/range", json=body).status_code == 200
    r = client.delete("/api/params/range", query_string={"parameter": p["name"]})
    assert r.status_code == 200


@pytest.mark.parametrize("body, code", [({"max_steps": 0}, "bad_max_steps"), ({"max_steps": True}, "bad_max_steps"),
                                        ({"max_steps": rq.MAX_OPTIMISE_STEPS + 1}, "bad_max_steps"),
                                        ({"max_steps": 5.5}, "bad_max_steps"), ({"use_vlm": "yes"}, "bad_use_vlm"),
                                        ({"stream": 1}, "bad_stream"), ({"version": None}, "bad_version"),
                                        ({"model": {}}, "bad_model")])
def test_optimise_refuses_a_bad_body_before_any_work(client, body, code):
    r = client.post("/api/optimise", json=body)
    assert r.status_code == 400 and r.get_json()["error"] == code, r.get_json()
    assert r.get_json()["message"]


def test_form_fields_are_read_as_the_types_the_contract_declares(client):
    """A multipart /api/vlm sends strings: "true"/"512" are read as the declared bool/int, anything else refused."""
    r = client.post("/api/vlm", data={"prompt": "wider", "stream": "maybe"}, content_type="multipart/form-data")
    assert r.status_code == 400 and r.get_json()["error"] == "bad_flag"
    r = client.post("/api/vlm", data={"prompt": "wider", "max_new_tokens": "lots"},
                    content_type="multipart/form-data")
    assert r.status_code == 400 and r.get_json()["error"] == "bad_max_new_tokens"
    r = client.post("/api/vlm", data={"prompt": "   "}, content_type="multipart/form-data")
    assert r.status_code == 400 and r.get_json()["error"] == "missing_prompt"


def test_docs_api_md_states_the_limits_the_contract_defines():
    """docs/api.md is prose over the same contract: the limits it states are the ones in web/contract/requests.py."""
    from pathlib import Path

    from vlm.dataset import MAX_REASON_CHARS
    from vlm.images import MAX_IMAGES

    text = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    stated = [f"≤ {rq.MAX_PROMPT_CHARS} characters", f"(≤ {MAX_IMAGES})", f"1..{rq.MAX_NEW_TOKENS}",
              f"0..{rq.MAX_TEMPERATURE:g}", f"≤ {MAX_REASON_CHARS} characters",
              f"size={rq.MIN_RENDER_SIZE}..{rq.MAX_RENDER_SIZE}", f"1..{rq.MAX_OPTIMISE_STEPS} "
              f"({rq.DEFAULT_OPTIMISE_STEPS})", f"at most {rq.MAX_TARGET_MB} MB", "nested deeper than 32 levels"]
    missing = [s for s in stated if s not in text]
    assert not missing, missing
