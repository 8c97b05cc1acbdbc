"""CKV_LMNH_4: an RDS instance's master password is managed by RDS in Secrets Manager.

Passes when ManageMasterUserPassword is true and no MasterUserPassword is given. AWS refuses
the two together, and cfn-lint does not catch that; a MasterUserPassword alone puts the
password in the template or its parameters. A replica or a restore from a snapshot, which
names no master user, passes.
"""

from __future__ import annotations

from typing import Any

from checkov.cloudformation.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult


class RdsManagedMasterPassword(BaseResourceCheck):
    def __init__(self) -> None:
        super().__init__(
            name="Ensure RDS manages the master password (ManageMasterUserPassword true, no"
            " MasterUserPassword)",
            id="CKV_LMNH_4",
            categories=[CheckCategories.SECRETS],
            supported_resources=["AWS::RDS::DBInstance", "AWS::RDS::DBCluster"],
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        self.evaluated_keys = [
            "Properties/ManageMasterUserPassword",
            "Properties/MasterUserPassword",
        ]
        properties = conf.get("Properties") or {}
        if "MasterUserPassword" in properties:
            return CheckResult.FAILED
        if "MasterUsername" not in properties:
            return CheckResult.PASSED
        managed = str(properties.get("ManageMasterUserPassword")).lower() == "true"
        return CheckResult.PASSED if managed else CheckResult.FAILED


check = RdsManagedMasterPassword()
