"""CKV_LMNH_2: an EC2 instance answers instance-metadata requests with IMDSv2 tokens only.

checkov's own IMDS check (CKV_AWS_79) looks at AWS::EC2::LaunchTemplate alone; this stack
declares an AWS::EC2::Instance. Passes when MetadataOptions.HttpTokens is "required" or the
metadata endpoint is disabled.
"""

from __future__ import annotations

from typing import Any

from checkov.cloudformation.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult


class InstanceImdsV2Only(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Ensure an EC2 instance requires IMDSv2 (MetadataOptions HttpTokens required)",
            id="CKV_LMNH_2",
            categories=[CheckCategories.IAM],
            supported_resources=["AWS::EC2::Instance"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        self.evaluated_keys = ["Properties/MetadataOptions"]
        options = (conf.get("Properties") or {}).get("MetadataOptions") or {}
        if not isinstance(options, dict):
            return CheckResult.UNKNOWN
        if options.get("HttpEndpoint") == "disabled" or options.get("HttpTokens") == "required":
            return CheckResult.PASSED
        return CheckResult.FAILED


check = InstanceImdsV2Only()
