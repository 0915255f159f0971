"""Expands template.yaml into what each function may do and where.

Runs the SAM transform (the one `sam deploy` runs, from aws-sam-translator,
which cfn-lint brings), so SAM policy templates become the IAM statements AWS
would attach. Intrinsics are then resolved against the physical names given
on stdin:

  {"parameters": {...}, "resources": {"LogicalId": {"Ref": ..., "Arn": ..., ...}},
   "region": ..., "account": ..., "stack": ...}

Prints {"FunctionLogicalId": {"env": {...}, "statements": [...]}} as JSON.
With `--stage TEMPLATE` it prints the HTTP API stage's throttles instead.
"""

import json
import os
import re
import sys

from cfnlint.decode import decode
from samtranslator.translator.transform import transform


class NoManagedPolicies:
    """SAM asks for managed policy ARNs by name; none are needed offline."""

    def load(self):
        return {}


NO_VALUE = object()


class Resolver:
    def __init__(self, template, given):
        self.given = given
        self.conditions = template.get("Conditions", {})
        self.params = dict(given["parameters"])
        for name, spec in template.get("Parameters", {}).items():
            if name not in self.params and "Default" in spec:
                self.params[name] = spec["Default"]
        self.pseudo = {
            "AWS::Region": given["region"],
            "AWS::AccountId": given["account"],
            "AWS::Partition": "aws",
            "AWS::StackName": given["stack"],
            "AWS::URLSuffix": "amazonaws.com",
        }

    def ref(self, name):
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.params:
            return self.params[name]
        return self.given["resources"].get(name, {}).get("Ref", f"unresolved:{name}")

    def condition(self, name):
        return bool(self.value(self.conditions[name]))

    def sub(self, spec):
        text, extra = (spec, {}) if isinstance(spec, str) else (spec[0], spec[1])

        def one(m):
            key = m.group(1)
            if key in extra:
                return str(self.value(extra[key]))
            if "." in key:
                res, attr = key.split(".", 1)
                return str(self.given["resources"].get(res, {}).get(attr, f"unresolved:{key}"))
            return str(self.ref(key))

        return re.sub(r"\$\{([^}!]+)\}", one, text)

    def value(self, v):
        if isinstance(v, list):
            return [x for x in (self.value(i) for i in v) if x is not NO_VALUE]
        if not isinstance(v, dict):
            return v
        if len(v) == 1:
            (k, arg), = v.items()
            if k == "Ref":
                return self.ref(arg)
            if k == "Fn::GetAtt":
                res, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.given["resources"].get(res, {}).get(attr, f"unresolved:{res}.{attr}")
            if k == "Fn::Sub":
                return self.sub(arg)
            if k == "Fn::Join":
                return arg[0].join(str(x) for x in self.value(arg[1]))
            if k == "Fn::If":
                return self.value(arg[1] if self.condition(arg[0]) else arg[2])
            if k == "Fn::Equals":
                a, b = self.value(arg[0]), self.value(arg[1])
                return a == b
            if k == "Fn::Not":
                return not self.value(arg[0])
            if k == "Fn::And":
                return all(self.value(x) for x in arg)
            if k == "Fn::Or":
                return any(self.value(x) for x in arg)
            if k == "Condition":
                return self.condition(arg)
        out = {}
        for key, item in v.items():
            item = self.value(item)
            if item is not NO_VALUE:
                out[key] = item
        return out


def sam_transform(template_path, region, parameters):
    """The CloudFormation `sam deploy` would create from the template."""
    template, problems = decode(template_path)
    if template is None:
        sys.exit(f"cannot read {template_path}: {problems}")
    # `sam package` replaces local code paths with S3 locations before the
    # transform, which accepts nothing else; the code does not matter here.
    template.get("Globals", {}).get("Function", {})["CodeUri"] = "s3://code/functions.zip"
    for res in template["Resources"].values():
        if res.get("Type") == "AWS::Serverless::Function":
            res.setdefault("Properties", {}).pop("CodeUri", None)
    # The transform asks boto for the region; no call leaves the machine.
    os.environ["AWS_DEFAULT_REGION"] = region
    return transform(template, dict(parameters), NoManagedPolicies())


def expand(template_path, given):
    """What each function of the template may do, resolved against `given`."""
    transformed = sam_transform(template_path, given["region"], given["parameters"])
    resolver = Resolver(transformed, given)
    resources = transformed["Resources"]
    out = {}
    for name, res in resources.items():
        if res.get("Type") != "AWS::Lambda::Function":
            continue
        props = res["Properties"]
        role = resources[props["Role"]["Fn::GetAtt"][0]]
        statements = []
        for policy in resolver.value(role["Properties"].get("Policies", [])):
            statements.extend(policy["PolicyDocument"]["Statement"])
        env = resolver.value(props.get("Environment", {}).get("Variables", {}))
        # Lambda passes every variable as text.
        env = {k: v if isinstance(v, str) else json.dumps(v) for k, v in env.items()}
        out[name] = {"env": env, "statements": statements}
    return out


def stage_throttles(template_path):
    """The HTTP API stage's default and per-route throttles."""
    params = {name: "arn:aws:secretsmanager:us-east-1:1:secret:x" for name in
              ["DbSecretArn", "KommoSecretArn", "ZohoSecretArn", "StaffJwtSecretArn"]}
    transformed = sam_transform(template_path, "us-east-1", params)
    for res in transformed["Resources"].values():
        if res["Type"] == "AWS::ApiGatewayV2::Stage":
            props = res["Properties"]
            return {"default": props.get("DefaultRouteSettings", {}),
                    "routes": props.get("RouteSettings", {})}
    sys.exit("the template has no HTTP API stage")


def main():
    if sys.argv[1] == "--stage":
        json.dump(stage_throttles(sys.argv[2]), sys.stdout, indent=1, sort_keys=True)
        return
    json.dump(expand(sys.argv[1], json.load(sys.stdin)), sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
