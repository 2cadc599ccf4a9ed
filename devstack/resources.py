"""Create the template's data resources in the emulator.

Tables come from ``template.yaml`` through ``table_create_kwargs`` (never retyped);
creation is idempotent so a restarted dev stack, or one pointed at a long-running
external emulator (``AWS_ENDPOINT_URL``), reuses what is there.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING, Any

from devstack.template import ACCOUNT_ID, REGION, STACK_NAME, StateTemplate

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.client import DynamoDBClient
    from mypy_boto3_events.client import EventBridgeClient
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_secretsmanager.client import SecretsManagerClient
    from mypy_boto3_sqs.client import SQSClient
    from mypy_boto3_sqs.literals import QueueAttributeNameType

DUMMY_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
# A queue's properties in the template that are also its attributes in CreateQueue.
_QUEUE_ATTRIBUTES: tuple[QueueAttributeNameType, ...] = (
    "VisibilityTimeout",
    "MessageRetentionPeriod",
    "DelaySeconds",
    "FifoQueue",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
)


def local_table_name(logical_id: str) -> str:
    return f"{STACK_NAME}-{logical_id}"


def client(service: str, endpoint_url: str) -> Any:
    """A boto3 client of the emulator (Any: callers annotate it with their service's stub type)."""
    import boto3

    return boto3.client(service, endpoint_url=endpoint_url, region_name=REGION, **DUMMY_CREDENTIALS)


def create_resources(
    template: StateTemplate,
    endpoint_url: str | None = None,
    *,
    table_names: dict[str, str] | None = None,
) -> dict[str, str]:
    """Create KMS keys (with their aliases), tables, event buses, queues, buckets and event rules (with their
    targets); return the physical names map.

    The map holds ``LogicalId`` (what ``!Ref`` yields) and ``LogicalId.Attribute``
    (what ``!GetAtt`` yields) and is also recorded on ``template``.
    """
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        raise ValueError("no emulator endpoint: pass endpoint_url or set AWS_ENDPOINT_URL")
    names: dict[str, str] = {}

    # First: the tables' encryption, the queues, the bucket and the functions' environment name the keys.
    names.update(ensure_keys(client("kms", endpoint), template))
    template.set_physical_names(names)

    ddb: DynamoDBClient = client("dynamodb", endpoint)
    for logical_id in template.tables():
        name = (table_names or {}).get(logical_id, local_table_name(logical_id))
        description = ensure_table(ddb, template, logical_id, name)
        names[logical_id] = name
        names[f"{logical_id}.Arn"] = description["TableArn"]
        if description.get("LatestStreamArn"):
            names[f"{logical_id}.StreamArn"] = description["LatestStreamArn"]

    events: EventBridgeClient = client("events", endpoint)
    for logical_id, props in template.event_buses().items():
        name = props.get("Name") or local_table_name(logical_id)
        try:
            arn = events.create_event_bus(Name=name)["EventBusArn"]
        except events.exceptions.ResourceAlreadyExistsException:
            arn = events.describe_event_bus(Name=name)["Arn"]
        names[logical_id] = name
        names[f"{logical_id}.Arn"] = arn
        names[f"{logical_id}.Name"] = name

    if template.queues():
        sqs: SQSClient = client("sqs", endpoint)
        for logical_id, props in template.queues().items():
            queue_name = props.get("QueueName") or local_table_name(logical_id)
            attributes = {name: str(props[name]) for name in _QUEUE_ATTRIBUTES if name in props}
            url = sqs.create_queue(QueueName=queue_name, Attributes=attributes)["QueueUrl"]
            names[logical_id] = url  # !Ref of a queue is its URL
            names[f"{logical_id}.QueueName"] = queue_name
            names[f"{logical_id}.QueueUrl"] = url
            names[f"{logical_id}.Arn"] = f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{queue_name}"

    buckets = template.resources_of_type("AWS::S3::Bucket")
    if buckets:
        s3: S3Client = client("s3", endpoint)
        for logical_id in buckets:
            name = ensure_bucket(s3, template, logical_id)
            names[logical_id] = name
            names[f"{logical_id}.Arn"] = f"arn:aws:s3:::{name}"

    secrets = {
        logical_id: resource
        for logical_id, resource in template.resources_of_type("AWS::SecretsManager::Secret").items()
        if "Condition" not in resource or template.condition(resource["Condition"])
    }
    if secrets:
        manager: SecretsManagerClient = client("secretsmanager", endpoint)
        for logical_id in secrets:
            names[logical_id] = ensure_secret(manager, local_table_name(logical_id), template.properties(logical_id))

    # Rules resolve against the names above (a target's !GetAtt Queue.Arn), so they come last.
    template.set_physical_names(names)
    for logical_id, props in template.event_rules().items():
        bus = props.get("EventBusName") or "default"
        events.put_rule(
            Name=local_table_name(logical_id),
            EventBusName=bus,
            EventPattern=json.dumps(props["EventPattern"]),
            State=props.get("State", "ENABLED"),
        )
        events.put_targets(
            Rule=local_table_name(logical_id),
            EventBusName=bus,
            Targets=[{"Id": target["Id"], "Arn": target["Arn"]} for target in props.get("Targets") or []],
        )
        names[logical_id] = local_table_name(logical_id)
        names[f"{logical_id}.Arn"] = f"arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/{bus}/{local_table_name(logical_id)}"

    template.set_physical_names(names)
    return names


def ensure_bucket(s3: S3Client, template: StateTemplate, logical_id: str) -> str:
    """Create the bucket unless it exists, with the template's default encryption; return its name."""
    props = template.properties(logical_id)
    # No BucketName in the template (a deployed stack gets a generated one); S3 wants lower case.
    name = str(props.get("BucketName") or local_table_name(logical_id)).lower()
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        s3.create_bucket(Bucket=name)
    rules = (props.get("BucketEncryption") or {}).get("ServerSideEncryptionConfiguration")
    if rules:
        # CloudFormation's ServerSideEncryptionByDefault is the API's ApplyServerSideEncryptionByDefault.
        s3.put_bucket_encryption(
            Bucket=name,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {
                        "ApplyServerSideEncryptionByDefault": rule["ServerSideEncryptionByDefault"],
                        "BucketKeyEnabled": bool(rule.get("BucketKeyEnabled", False)),
                    }
                    for rule in rules
                ]
            },
        )
    return name


def ensure_keys(kms: Any, template: StateTemplate) -> dict[str, str]:
    """Create the template's KMS keys as it declares them (policy, rotation) and point its aliases at them;
    return their physical names (``!Ref``: the key id; ``!GetAtt .Arn``). A key whose alias already exists
    is reused: a restarted stack must still decrypt what it encrypted."""
    names: dict[str, str] = {}
    aliases = {
        logical_id: template.resources[logical_id]["Properties"]
        for logical_id in template.resources_of_type("AWS::KMS::Alias")
    }
    for logical_id in template.resources_of_type("AWS::KMS::Key"):
        props = template.properties(logical_id)
        own_aliases = [
            str(template.resolve(alias["AliasName"]))
            for alias in aliases.values()
            if alias.get("TargetKeyId") in ({"Ref": logical_id}, {"Fn::GetAtt": [logical_id, "Arn"]})
        ]
        metadata = None
        for alias in own_aliases:
            with contextlib.suppress(kms.exceptions.NotFoundException):
                metadata = kms.describe_key(KeyId=alias)["KeyMetadata"]
                break
        if metadata is None:
            create: dict[str, Any] = {
                "Description": str(props.get("Description") or logical_id),
                "KeySpec": str(props.get("KeySpec") or "SYMMETRIC_DEFAULT"),
                "KeyUsage": str(props.get("KeyUsage") or "ENCRYPT_DECRYPT"),
            }
            if props.get("KeyPolicy"):
                create["Policy"] = json.dumps(props["KeyPolicy"])
            metadata = kms.create_key(**create)["KeyMetadata"]
            for alias in own_aliases:
                kms.create_alias(AliasName=alias, TargetKeyId=metadata["KeyId"])
        if props.get("EnableKeyRotation"):
            rotation: dict[str, Any] = {"KeyId": metadata["KeyId"]}
            if props.get("RotationPeriodInDays"):
                rotation["RotationPeriodInDays"] = int(props["RotationPeriodInDays"])
            kms.enable_key_rotation(**rotation)
        names[logical_id] = str(metadata["KeyId"])
        names[f"{logical_id}.Arn"] = str(metadata["Arn"])
        names[f"{logical_id}.KeyId"] = str(metadata["KeyId"])
    for logical_id, alias in aliases.items():
        name = str(template.resolve(alias["AliasName"]))
        names[logical_id] = name
    return names


def ensure_table(ddb: DynamoDBClient, template: StateTemplate, logical_id: str, table_name: str) -> dict[str, Any]:
    """Create the table unless it exists; return its description."""
    # Reuse an existing table: a restarted stack or an external emulator keeps its data.
    with contextlib.suppress(ddb.exceptions.ResourceInUseException):
        ddb.create_table(**template.table_create_kwargs(logical_id, table_name))
    # The stubs say whole seconds; botocore sleeps any number, and the emulator creates a table in milliseconds.
    waiter_config = {"Delay": 0.2, "MaxAttempts": 50}
    ddb.get_waiter("table_exists").wait(TableName=table_name, WaiterConfig=waiter_config)  # type: ignore[arg-type]
    ttl_attribute = template.table_ttl_attribute(logical_id)
    if ttl_attribute:
        current = ddb.describe_time_to_live(TableName=table_name)["TimeToLiveDescription"]
        if current.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            ddb.update_time_to_live(
                TableName=table_name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl_attribute},
            )
    return dict(ddb.describe_table(TableName=table_name)["Table"])


def ensure_secret(
    manager: SecretsManagerClient, name: str, props: dict[str, Any] | None = None, value: str | None = None
) -> str:
    """Create the secret unless it exists; return its ARN (what ``!Ref`` of a secret yields). The value is
    ``value``, else the template's SecretString, else generated as CloudFormation's GenerateSecretString
    would (moto's CreateSecret does not generate)."""
    import secrets

    props = props or {}
    generate = props.get("GenerateSecretString") or {}
    length = max(32, int(generate.get("PasswordLength", 32)))
    secret = value or props.get("SecretString") or secrets.token_urlsafe(length)
    try:
        return str(manager.create_secret(Name=name, SecretString=secret)["ARN"])
    except manager.exceptions.ResourceExistsException:
        if value is not None:
            manager.put_secret_value(SecretId=name, SecretString=value)
        return str(manager.describe_secret(SecretId=name)["ARN"])
