"""Read ``template.yaml`` (SAM) for the local stack.

The template is the one source of truth for infrastructure, so local and deployed cannot drift: the local
stack takes its routes, functions, environment, authorizer, tables and buses from
it and keeps no second copy. This module parses the CloudFormation short-form
tags and resolves the intrinsic functions the template uses against local values:
parameter values, pseudo parameters, conditions and the physical names of the
resources the local stack created.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEMPLATE = REPO_ROOT / "template.yaml"

REGION = "us-east-1"
ACCOUNT_ID = "000000000000"
STACK_NAME = "state-service-local"

PSEUDO_PARAMETERS: dict[str, str] = {
    "AWS::Region": REGION,
    "AWS::AccountId": ACCOUNT_ID,
    "AWS::StackName": STACK_NAME,
    "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT_ID}:stack/{STACK_NAME}/local",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
}


class _NoValue:
    """``!Ref AWS::NoValue``: the key that holds it is dropped."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()


class TemplateError(ValueError):
    """The template uses something the local stack cannot resolve."""


# --- YAML loading -------------------------------------------------------------------------------


class CloudFormationLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short-form tags into their long form.

    ``!Ref X`` becomes ``{"Ref": "X"}``, ``!GetAtt A.B`` becomes
    ``{"Fn::GetAtt": ["A", "B"]}``, ``!Sub ...`` becomes ``{"Fn::Sub": ...}``, and so on,
    which is exactly what CloudFormation does before evaluating the template.
    """


def _construct_any(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    raise TemplateError(f"unsupported YAML node {node!r}")


def _make_constructor(long_name: str) -> Any:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
        return {long_name: _construct_any(loader, node)}

    return construct


def _construct_getatt(loader: yaml.SafeLoader, node: yaml.Node) -> dict[str, Any]:
    value = _construct_any(loader, node)
    if isinstance(value, str):
        # "Resource.Attribute": the attribute may itself contain dots (Endpoint.Address).
        resource, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [resource, attribute]}
    return {"Fn::GetAtt": list(value)}


CloudFormationLoader.add_constructor("!Ref", _make_constructor("Ref"))
CloudFormationLoader.add_constructor("!Condition", _make_constructor("Condition"))
CloudFormationLoader.add_constructor("!GetAtt", _construct_getatt)
for _short in (
    "Sub",
    "If",
    "Equals",
    "Not",
    "And",
    "Or",
    "Join",
    "Select",
    "Split",
    "FindInMap",
    "Base64",
    "GetAZs",
    "ImportValue",
    "Cidr",
    "Length",
    "ToJsonString",
):
    CloudFormationLoader.add_constructor(f"!{_short}", _make_constructor(f"Fn::{_short}"))


def load_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=CloudFormationLoader)  # noqa: S506 - SafeLoader subclass
    if not isinstance(data, dict):
        raise TemplateError(f"{path} is not a CloudFormation template")
    return data


# --- Resolved views -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One ``HttpApi`` event of a function: ``method`` is upper case or ``ANY``."""

    method: str
    path: str
    function: str
    authorizer: str | None  # None: the route is open (Auth.Authorizer: NONE)

    @property
    def route_key(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    function_name: str
    code_uri: Path
    handler: str
    timeout: float
    memory_size: int
    environment: dict[str, str]
    layers: tuple[Path, ...]

    @property
    def module(self) -> str:
        return self.handler.rsplit(".", 1)[0]

    @property
    def handler_name(self) -> str:
        return self.handler.rsplit(".", 1)[1]


@dataclass(frozen=True)
class AuthorizerSpec:
    name: str
    function: str
    identity_headers: tuple[str, ...]
    ttl_seconds: int
    simple_responses: bool
    payload_version: str


@dataclass
class StateTemplate:
    """A loaded template plus the local values its intrinsics resolve against."""

    path: Path
    raw: dict[str, Any]
    parameter_overrides: dict[str, str] = field(default_factory=dict)
    physical_names: dict[str, str] = field(default_factory=dict)
    # A deployed URL prefix -> the local listener that stands in for it (the WebSocket API's management
    # endpoint, https://<api>.execute-api.<region>.amazonaws.com): applied to every function's environment.
    url_rewrites: dict[str, str] = field(default_factory=dict)

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return dict(self.raw.get("Resources") or {})

    def resources_of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {lid: res for lid, res in self.resources.items() if res.get("Type") == resource_type}

    @property
    def parameters(self) -> dict[str, str]:
        """Parameter values: template Defaults overridden by the caller's values."""
        values: dict[str, str] = {}
        for name, spec in (self.raw.get("Parameters") or {}).items():
            if "Default" in (spec or {}):
                values[name] = _scalar_str(spec["Default"])
        for name, value in self.parameter_overrides.items():
            values[name] = value
        return values

    def set_physical_names(self, names: Mapping[str, str]) -> None:
        """Record what the local stack created: ``{"StateTable": "...", "StateTable.StreamArn": ...}``."""
        self.physical_names.update(names)

    def resolve(self, value: Any) -> Any:
        return _Resolver(self).resolve(value)

    def _local_url(self, value: str) -> str:
        for deployed, local in self.url_rewrites.items():
            if value == deployed or value.startswith(deployed + "/"):
                return local + value[len(deployed) :]
        return value

    def condition(self, name: str) -> bool:
        return _Resolver(self).condition(name)

    def properties(self, logical_id: str) -> dict[str, Any]:
        """The resolved Properties of one resource."""
        resource = self.resources.get(logical_id)
        if resource is None:
            raise TemplateError(f"no resource {logical_id!r} in {self.path}")
        props = self.resolve(resource.get("Properties") or {})
        return props if isinstance(props, dict) else {}

    # -- functions, routes, authorizer ---------------------------------------------------------

    def _globals_function(self) -> dict[str, Any]:
        return dict((self.raw.get("Globals") or {}).get("Function") or {})

    def function_ids(self) -> list[str]:
        return list(self.resources_of_type("AWS::Serverless::Function"))

    def function(self, logical_id: str) -> FunctionSpec:
        resource = self.resources.get(logical_id)
        if resource is None or resource.get("Type") != "AWS::Serverless::Function":
            raise TemplateError(f"no AWS::Serverless::Function {logical_id!r}")
        glob = self._globals_function()
        own = dict(resource.get("Properties") or {})

        def setting(name: str, default: Any = None) -> Any:
            if name in own:
                return self.resolve(own[name])
            if name in glob:
                return self.resolve(glob[name])
            return default

        env: dict[str, str] = {}
        # SAM merges Globals.Function.Environment.Variables with the function's own.
        for source in (glob, own):
            variables = self.resolve(((source.get("Environment") or {}).get("Variables")) or {})
            for key, val in (variables or {}).items():
                env[key] = self._local_url(_scalar_str(val))

        layers: list[Path] = []
        raw_layers = list(glob.get("Layers") or []) + list(own.get("Layers") or [])
        for layer in raw_layers:
            layer_dir = self._layer_dir(layer)
            if layer_dir is not None and layer_dir not in layers:
                layers.append(layer_dir)

        code_uri = setting("CodeUri")
        if not isinstance(code_uri, str):
            raise TemplateError(f"{logical_id}: CodeUri must be a local directory")
        name = setting("FunctionName") or f"{STACK_NAME}-{logical_id}"
        return FunctionSpec(
            logical_id=logical_id,
            function_name=str(name),
            code_uri=(self.base_dir / code_uri).resolve(),
            handler=str(setting("Handler", "app.lambda_handler")),
            timeout=float(setting("Timeout", 3)),
            memory_size=int(setting("MemorySize", 128)),
            environment=env,
            layers=tuple(layers),
        )

    def _layer_dir(self, layer: Any) -> Path | None:
        # Only layers defined in this template run locally; a published layer ARN
        # (e.g. Powertools) is provided by the venv instead.
        if isinstance(layer, dict) and "Ref" in layer:
            res = self.resources.get(layer["Ref"])
            if res and res.get("Type") in ("AWS::Serverless::LayerVersion", "AWS::Lambda::LayerVersion"):
                props = res.get("Properties") or {}
                content = props.get("ContentUri") or (props.get("Content") or {})
                if isinstance(content, str):
                    return (self.base_dir / content).resolve()
        return None

    def functions(self) -> dict[str, FunctionSpec]:
        return {lid: self.function(lid) for lid in self.function_ids()}

    def http_api_id(self) -> str | None:
        apis = self.resources_of_type("AWS::Serverless::HttpApi")
        return next(iter(apis), None)

    def _http_api_auth(self) -> dict[str, Any]:
        api_id = self.http_api_id()
        if api_id is None:
            return dict(((self.raw.get("Globals") or {}).get("HttpApi") or {}).get("Auth") or {})
        return dict((self.resources[api_id].get("Properties") or {}).get("Auth") or {})

    def routes(self) -> list[Route]:
        default_authorizer = self._http_api_auth().get("DefaultAuthorizer")
        routes: list[Route] = []
        for lid in self.function_ids():
            events = (self.resources[lid].get("Properties") or {}).get("Events") or {}
            for event in events.values():
                if event.get("Type") != "HttpApi":
                    continue
                props = self.resolve(event.get("Properties") or {})
                authorizer = (props.get("Auth") or {}).get("Authorizer", default_authorizer)
                if authorizer == "NONE":
                    authorizer = None
                routes.append(
                    Route(
                        method=str(props.get("Method", "ANY")).upper(),
                        path=str(props.get("Path", "$default")),
                        function=lid,
                        authorizer=authorizer,
                    )
                )
        return routes

    def authorizers(self) -> dict[str, AuthorizerSpec]:
        auth = self._http_api_auth()
        found: dict[str, AuthorizerSpec] = {}
        for name, spec in (auth.get("Authorizers") or {}).items():
            raw_arn = spec.get("FunctionArn")
            if not (isinstance(raw_arn, dict) and "Fn::GetAtt" in raw_arn):
                # JWT authorizers and foreign functions are not run locally.
                continue
            function_id = raw_arn["Fn::GetAtt"][0]
            resolved = self.resolve(spec)
            identity = resolved.get("Identity") or {}
            found[name] = AuthorizerSpec(
                name=name,
                function=function_id,
                identity_headers=tuple(identity.get("Headers") or ()),
                # SAM's default for ReauthorizeEvery on Lambda authorizers is 300 s.
                ttl_seconds=int(identity.get("ReauthorizeEvery", 300)),
                simple_responses=bool(resolved.get("EnableSimpleResponses", False)),
                payload_version=str(resolved.get("AuthorizerPayloadFormatVersion", "2.0")),
            )
        return found

    def stage_throttling(self) -> tuple[int, float] | None:
        """The HTTP API stage's default route throttling (burst, rate), or None when the template sets none."""
        api_id = self.http_api_id()
        settings = dict(((self.raw.get("Globals") or {}).get("HttpApi") or {}).get("DefaultRouteSettings") or {})
        if api_id is not None:
            settings.update((self.resources[api_id].get("Properties") or {}).get("DefaultRouteSettings") or {})
        resolved = self.resolve(settings)
        burst, rate = resolved.get("ThrottlingBurstLimit"), resolved.get("ThrottlingRateLimit")
        if burst is None or rate is None:
            return None
        return int(burst), float(rate)

    def default_authorizer(self) -> AuthorizerSpec | None:
        name = self._http_api_auth().get("DefaultAuthorizer")
        return self.authorizers().get(name) if name else None

    # -- data resources ------------------------------------------------------------------------

    def tables(self) -> dict[str, dict[str, Any]]:
        return {lid: self.properties(lid) for lid in self.resources_of_type("AWS::DynamoDB::Table")}

    def event_buses(self) -> dict[str, dict[str, Any]]:
        return {lid: self.properties(lid) for lid in self.resources_of_type("AWS::Events::EventBus")}

    def queues(self) -> dict[str, dict[str, Any]]:
        return {lid: self.properties(lid) for lid in self.resources_of_type("AWS::SQS::Queue")}

    def event_rules(self) -> dict[str, dict[str, Any]]:
        return {lid: self.properties(lid) for lid in self.resources_of_type("AWS::Events::Rule")}

    def stream_event_sources(self) -> list[tuple[str, str, dict[str, Any]]]:
        """``(function, event name, resolved properties)`` of every DynamoDB event source mapping of a
        function the stack creates (its Condition, if any, holds: the cache repair exists only with Redis)."""
        found: list[tuple[str, str, dict[str, Any]]] = []
        for lid in self.function_ids():
            condition = self.resources[lid].get("Condition")
            if condition is not None and not self.condition(condition):
                continue
            events = (self.resources[lid].get("Properties") or {}).get("Events") or {}
            for name, event in events.items():
                if event.get("Type") == "DynamoDB":
                    found.append((lid, name, self.resolve(event.get("Properties") or {})))
        return found

    def table_create_kwargs(self, logical_id: str, table_name: str) -> dict[str, Any]:
        """Arguments for ``dynamodb.create_table`` from the template's table definition."""
        props = self.properties(logical_id)
        kwargs: dict[str, Any] = {
            "TableName": table_name,
            "KeySchema": props["KeySchema"],
            "AttributeDefinitions": props["AttributeDefinitions"],
            "BillingMode": props.get("BillingMode", "PROVISIONED"),
        }
        if kwargs["BillingMode"] == "PROVISIONED":
            kwargs["ProvisionedThroughput"] = props.get(
                "ProvisionedThroughput", {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5}
            )
        stream = props.get("StreamSpecification")
        if stream:
            kwargs["StreamSpecification"] = {
                "StreamEnabled": True,
                "StreamViewType": stream["StreamViewType"],
            }
        for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
            if props.get(key):
                kwargs[key] = props[key]
        sse = props.get("SSESpecification")
        if sse:
            # CloudFormation says SSEEnabled where the API says Enabled.
            kwargs["SSESpecification"] = {"Enabled": bool(sse.get("SSEEnabled", False))}
            for name in ("SSEType", "KMSMasterKeyId"):
                if sse.get(name):
                    kwargs["SSESpecification"][name] = sse[name]
        # DeletionProtectionEnabled is left out on purpose: tests create and drop local tables.
        return kwargs

    def table_ttl_attribute(self, logical_id: str) -> str | None:
        spec = self.properties(logical_id).get("TimeToLiveSpecification") or {}
        return spec.get("AttributeName") if spec.get("Enabled", True) else None


def load_template(
    path: Path | str | None = None,
    parameters: Mapping[str, str] | None = None,
    physical_names: Mapping[str, str] | None = None,
) -> StateTemplate:
    """Load ``template.yaml`` (default: the repository's) with local parameter values."""
    template_path = Path(path) if path is not None else DEFAULT_TEMPLATE
    return StateTemplate(
        path=template_path.resolve(),
        raw=load_yaml(template_path),
        parameter_overrides={k: str(v) for k, v in (parameters or {}).items()},
        physical_names=dict(physical_names or {}),
    )


def table_create_kwargs(logical_id: str, table_name: str, template: StateTemplate | None = None) -> dict[str, Any]:
    """``dynamodb.create_table`` arguments for a table of ``template.yaml`` (the repository's by default)."""
    return (template or load_template()).table_create_kwargs(logical_id, table_name)


# --- Intrinsic functions ------------------------------------------------------------------------


def _scalar_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_scalar_str(v) for v in value)
    return "" if value is None else str(value)


_SUB_VAR = re.compile(r"\$\{([^}]*)\}")


class _Resolver:
    def __init__(self, template: StateTemplate) -> None:
        self.t = template
        self.params = template.parameters

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            handler = self._functions.get(key)
            if handler is not None:
                return handler(self, arg)
        out: dict[str, Any] = {}
        for key, val in value.items():
            resolved = self.resolve(val)
            if resolved is not NO_VALUE:
                out[key] = resolved
        return out

    # Ref and GetAtt ---------------------------------------------------------------------------

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in PSEUDO_PARAMETERS:
            return PSEUDO_PARAMETERS[name]
        if name in self.params:
            declared = ((self.t.raw.get("Parameters") or {}).get(name) or {}).get("Type", "String")
            if declared == "CommaDelimitedList" or str(declared).startswith("List<"):
                # A list parameter's !Ref is the list (CloudFormation splits on commas).
                return [item.strip() for item in self.params[name].split(",")]
            return self.params[name]
        if name in self.t.physical_names:
            return self.t.physical_names[name]
        resource = self.t.resources.get(name)
        if resource is None:
            raise TemplateError(f"!Ref to unknown name {name!r}")
        return self._default_physical(name, resource)

    def _default_physical(self, logical_id: str, resource: dict[str, Any]) -> str:
        props = resource.get("Properties") or {}
        rtype = resource.get("Type", "")
        for name_prop in ("Name", "FunctionName", "TableName", "QueueName"):
            if name_prop in props and not (isinstance(props[name_prop], dict) and len(props[name_prop]) == 0):
                resolved = self.resolve(props[name_prop])
                if isinstance(resolved, str):
                    return resolved
        if rtype == "AWS::SQS::Queue":
            return f"http://localhost/{ACCOUNT_ID}/{STACK_NAME}-{logical_id}"
        return f"{STACK_NAME}-{logical_id}"

    def get_att(self, arg: Any) -> Any:
        if isinstance(arg, str):
            resource, _, attribute = arg.partition(".")
        else:
            resource, attribute = self.resolve(arg[0]), self.resolve(arg[1])
        key = f"{resource}.{attribute}"
        if key in self.t.physical_names:
            return self.t.physical_names[key]
        res = self.t.resources.get(resource)
        if res is None:
            raise TemplateError(f"!GetAtt to unknown resource {resource!r}")
        name = self.ref(resource)
        service = {
            "AWS::Serverless::Function": "lambda",
            "AWS::Lambda::Function": "lambda",
            "AWS::DynamoDB::Table": "dynamodb",
            "AWS::Events::EventBus": "events",
            "AWS::SQS::Queue": "sqs",
            "AWS::IAM::Role": "iam",
            "AWS::KMS::Key": "kms",
        }.get(res.get("Type", ""), "local")
        if attribute == "Arn":
            kind = {
                "lambda": f"function:{name}",
                "dynamodb": f"table/{name}",
                "events": f"event-bus/{name}",
                "sqs": str(name).rsplit("/", 1)[-1],
                "iam": f"role/{name}",
                "kms": f"key/{name}",
            }.get(service, str(name))
            region = "" if service == "iam" else REGION
            return f"arn:aws:{service}:{region}:{ACCOUNT_ID}:{kind}"
        if attribute == "StreamArn":
            return f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/{name}/stream/local"
        if attribute == "QueueName":
            return str(name).rsplit("/", 1)[-1]
        if attribute == "QueueUrl":
            return str(name)
        return f"{name}.{attribute}"

    # Conditions -------------------------------------------------------------------------------

    def condition(self, name: str) -> bool:
        conditions = self.t.raw.get("Conditions") or {}
        if name not in conditions:
            raise TemplateError(f"unknown condition {name!r}")
        return bool(self.resolve(conditions[name]))

    def _fn_if(self, arg: list[Any]) -> Any:
        name, when_true, when_false = arg
        return self.resolve(when_true if self.condition(name) else when_false)

    def _fn_equals(self, arg: list[Any]) -> bool:
        left, right = (self.resolve(a) for a in arg)
        return _scalar_str(left) == _scalar_str(right)

    def _fn_not(self, arg: list[Any]) -> bool:
        return not self._truth(arg[0])

    def _truth(self, value: Any) -> bool:
        if isinstance(value, dict) and set(value) == {"Condition"}:
            return self.condition(value["Condition"])
        return bool(self.resolve(value))

    # Strings and lists ------------------------------------------------------------------------

    def _fn_sub(self, arg: Any) -> str:
        if isinstance(arg, list):
            text, variables = arg[0], {k: self.resolve(v) for k, v in (arg[1] or {}).items()}
        else:
            text, variables = arg, {}

        def replace(match: re.Match[str]) -> str:
            inner = match.group(1)
            if inner.startswith("!"):  # ${!Literal} stays as ${Literal}
                return "${" + inner[1:] + "}"
            if inner in variables:
                return _scalar_str(variables[inner])
            if "." in inner and inner not in self.params and inner not in PSEUDO_PARAMETERS:
                return _scalar_str(self.get_att(inner))
            return _scalar_str(self.ref(inner))

        return _SUB_VAR.sub(replace, text)

    def _fn_join(self, arg: list[Any]) -> str:
        delimiter, items = arg
        values = self.resolve(items)
        return str(delimiter).join(_scalar_str(v) for v in values)

    def _fn_select(self, arg: list[Any]) -> Any:
        index, items = arg
        return self.resolve(items)[int(self.resolve(index))]

    def _fn_split(self, arg: list[Any]) -> list[str]:
        delimiter, text = arg
        return str(self.resolve(text)).split(str(delimiter))

    def _fn_find_in_map(self, arg: list[Any]) -> Any:
        map_name, top, second = (self.resolve(a) for a in arg)
        return self.resolve(self.t.raw["Mappings"][map_name][top][second])

    def _fn_to_json(self, arg: Any) -> str:
        import json

        return json.dumps(self.resolve(arg), separators=(",", ":"))

    _functions: dict[str, Any] = {
        "Ref": lambda self, a: self.ref(self.resolve(a) if not isinstance(a, str) else a),
        "Fn::GetAtt": lambda self, a: self.get_att(a),
        "Fn::Sub": lambda self, a: self._fn_sub(a),
        "Fn::If": lambda self, a: self._fn_if(a),
        "Fn::Equals": lambda self, a: self._fn_equals(a),
        "Fn::Not": lambda self, a: self._fn_not(a),
        "Fn::And": lambda self, a: all(self._truth(x) for x in a),
        "Fn::Or": lambda self, a: any(self._truth(x) for x in a),
        "Condition": lambda self, a: self.condition(a),
        "Fn::Join": lambda self, a: self._fn_join(a),
        "Fn::Select": lambda self, a: self._fn_select(a),
        "Fn::Split": lambda self, a: self._fn_split(a),
        "Fn::FindInMap": lambda self, a: self._fn_find_in_map(a),
        "Fn::ToJsonString": lambda self, a: self._fn_to_json(a),
    }
