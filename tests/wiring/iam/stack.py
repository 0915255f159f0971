"""Sets up a moto server that enforces IAM, for the least-privilege test.

Usage: stack.py ENDPOINT TEMPLATE. The server must have been started with
INITIAL_NO_AUTH_ACTION_COUNT=3: the first three calls create an admin user,
every later call is checked against the caller's IAM policy.

Creates the secrets and queues the template refers to, expands the template
(expand.py) against them, and makes one IAM user per function whose policy is
exactly the function's statements, plus a control user per function whose
policy lacks the last statement. Prints JSON:

  {"admin": [id, secret],
   "functions": {"FunctionId": {"env": {...}, "statements": [...],
                                "key": [id, secret], "control_key": [id, secret] | null}}}
"""

import json
import os
import sys

import boto3

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from expand import expand  # noqa: E402

REGION = "us-east-1"
ACCOUNT = "123456789012"
STACK = "iam-test"
SECRETS = ["DbSecretArn", "KommoSecretArn", "ZohoSecretArn", "StaffJwtSecretArn", "SlackSecretArn"]
QUEUES = {
    "KommoEventsQueue": "kommo-events",
    "KommoEventsDeadLetterQueue": "kommo-events-dlq",
    "FullRefreshJobsQueue": "full-refresh-jobs",
    "FullRefreshJobsDeadLetterQueue": "full-refresh-jobs-dlq",
}


def client(service, endpoint, key):
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id=key[0], aws_secret_access_key=key[1])


def as_moto_checks(statement):
    """moto checks the resource of SQS calls but matches every Secrets
    Manager call against the resource `*`, so a grant on one secret's ARN
    would be refused. Secrets Manager statements keep their actions and get
    `*`; the test compares their resources with the secrets read itself."""
    actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
    if all(a.startswith("secretsmanager:") for a in actions):
        return dict(statement, Resource="*")
    return statement


def user_with(iam, name, statements):
    iam.create_user(UserName=name)
    if statements:
        doc = {"Version": "2012-10-17", "Statement": [as_moto_checks(s) for s in statements]}
        iam.put_user_policy(UserName=name, PolicyName="template", PolicyDocument=json.dumps(doc))
    k = iam.create_access_key(UserName=name)["AccessKey"]
    return [k["AccessKeyId"], k["SecretAccessKey"]]


def main():
    endpoint, template = sys.argv[1], sys.argv[2]
    bootstrap = client("iam", endpoint, ("bootstrap", "bootstrap"))
    admin = user_with(bootstrap, "admin", [{"Effect": "Allow", "Action": "*", "Resource": "*"}])
    iam = client("iam", endpoint, admin)
    sm = client("secretsmanager", endpoint, admin)
    sqs = client("sqs", endpoint, admin)
    parameters = {}
    for name in SECRETS:
        parameters[name] = sm.create_secret(Name=f"{STACK}-{name}", SecretString='{"probe": true}')["ARN"]
    resources = {}
    for logical, base in QUEUES.items():
        url = sqs.create_queue(QueueName=f"{STACK}-{base}")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        resources[logical] = {"Ref": url, "Arn": arn, "QueueName": f"{STACK}-{base}"}
    given = {"parameters": parameters, "resources": resources,
             "region": REGION, "account": ACCOUNT, "stack": STACK}
    functions = expand(template, given)
    for name, spec in functions.items():
        spec["key"] = user_with(iam, name, spec["statements"])
        spec["control_key"] = (
            user_with(iam, f"{name}-control", spec["statements"][:-1]) if spec["statements"] else None
        )
    json.dump({"admin": admin, "functions": functions}, sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
