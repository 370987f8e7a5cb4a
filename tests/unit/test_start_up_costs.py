"""What keeps start-up cheap without changing behaviour: one botocore loader for every client made
through shared.aws, and the template parsed once per content (in the process and in a file cache)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from local import deploy
from shared import aws

pytestmark = pytest.mark.unit

TEMPLATE = """AWSTemplateFormatVersion: "2010-09-09"
Parameters:
  Name:
    Type: String
Resources:
  Queue:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Ref Name
"""


def test_clients_share_one_loader_and_its_search_path_never_grows() -> None:
    """Every client made here reads botocore's data through one loader (the service models and
    endpoint rules are loaded once a process), and boto3's append of its data folder on each new
    session does not lengthen the path."""
    # given
    first = aws.client("sqs", region="us-east-1", endpoint_url="http://127.0.0.1:9")
    paths = aws._loader().search_paths
    # when
    later = [aws.client("dynamodb", region="eu-west-1", endpoint_url="http://127.0.0.1:9") for _ in range(3)]
    # then
    assert aws._loader().search_paths == paths
    assert paths[-1].endswith("boto3/data") and any(p.endswith("botocore/data") for p in paths)
    assert first.meta.region_name == "us-east-1"
    assert {c.meta.region_name for c in later} == {"eu-west-1"}
    assert all(c.meta.endpoint_url == "http://127.0.0.1:9" for c in [first, *later])


def test_each_client_keeps_its_own_credentials() -> None:
    """Sharing the loader shares no session state: keys given to one client are that client's only."""
    keyed = aws.client("sqs", region="us-east-1", keys=aws.Keys("AKIDONE", "secret-one"))
    other = aws.client("sqs", region="us-east-1", keys=aws.Keys("AKIDTWO", "secret-two"))
    assert keyed._request_signer._credentials.access_key == "AKIDONE"
    assert other._request_signer._credentials.access_key == "AKIDTWO"


def test_clients_share_a_session_until_the_environment_names_other_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A session is made once for the credentials the environment names (making one is most of a
    client's cost); a client made after they change signs with the new ones, not the cached."""
    # given
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFIRST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-first")
    first = aws.client("sqs", region="us-east-1", endpoint_url="http://127.0.0.1:9")
    again = aws.client("dynamodb", region="us-east-1", endpoint_url="http://127.0.0.1:9")
    assert aws._session() is aws._session()
    # when
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSECOND")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-second")
    later = aws.client("sqs", region="us-east-1", endpoint_url="http://127.0.0.1:9")
    # then
    assert first._request_signer._credentials.access_key == "AKIDFIRST"
    assert again._request_signer._credentials.access_key == "AKIDFIRST"
    assert later._request_signer._credentials.access_key == "AKIDSECOND"


def test_a_forked_child_makes_its_own_session() -> None:
    """A child forked after the parent made clients (a runner forked from a warmed interpreter)
    shares none of its sessions and can make clients whatever the parent's threads held."""
    parent = aws._session()
    with aws._sessions_lock:  # held by the parent at the fork, as another thread might
        pid = os.fork()
        if pid == 0:  # the child: exit code 0 only if it starts clean and makes a client
            ok = not aws._sessions and aws.client("sqs", region="us-east-1") is not None
            os._exit(0 if ok and aws._session() is not parent else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_template_is_parsed_once_per_content_and_each_caller_gets_its_own_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second load reads the cached parse (a file named by the text's SHA-256); a caller changing
    its copy changes nobody else's; an edited template is parsed afresh."""
    # given
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "template.yaml"
    path.write_text(TEMPLATE)
    # when
    first = deploy.load_template(path)
    first["Resources"]["Queue"]["Properties"]["QueueName"] = "changed by a caller"
    second = deploy.load_template(path)
    # then
    assert second["Resources"]["Queue"]["Properties"]["QueueName"] == {"Ref": "Name"}
    assert len(list((tmp_path / "cache" / "aipm" / "templates").glob("*.json"))) == 1
    # when the template changes
    path.write_text(TEMPLATE.replace("AWS::SQS::Queue", "AWS::SNS::Topic"))
    # then
    assert deploy.load_template(path)["Resources"]["Queue"]["Type"] == "AWS::SNS::Topic"
    assert len(list((tmp_path / "cache" / "aipm" / "templates").glob("*.json"))) == 2


def test_a_cached_parse_is_what_the_yaml_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that finds the file cache (another test worker wrote it) gets the same template as
    one that parses the YAML itself."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "template.yaml"
    path.write_text(TEMPLATE + "# another text, another key\n")
    parsed = deploy.load_template(path)
    deploy._parsed.cache_clear()  # as a fresh process: only the file cache is left
    assert deploy.load_template(path) == parsed
    assert parsed["Parameters"] == {"Name": {"Type": "String"}}


def test_a_translation_is_a_copy_of_its_own() -> None:
    """translate() keeps the result for the same template, region and parameters, and hands each
    caller a copy: one caller's edit is not in the next caller's template."""
    sam = deploy.load_template()
    params = {"TableName": "x", "NamePrefix": "x"}
    first = deploy.translate(sam, "us-east-1", params)
    first["Resources"].clear()
    assert deploy.translate(sam, "us-east-1", params)["Resources"]


ALIASED = """AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  Alias:
    Type: String
  Prefix:
    Type: String
Resources:
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: !Sub "${Prefix}-fn"
      Runtime: python3.12
      Handler: app.handler
      CodeUri: functions/x
      AutoPublishAlias: !Ref Alias
"""


def test_a_translation_is_shared_across_parameters_only_when_sam_uses_none_of_their_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stacks of other names share one translation of the project's template (SAM leaves its
    parameters to CloudFormation), and it is the translation SAM makes for them; a template whose
    translation takes a parameter's value (an AutoPublishAlias) is translated for each value."""
    # the project's template: one translation, equal to SAM's own for each parameter set
    sam = deploy.load_template()
    for name in ("one", "two"):
        params = {"TableName": f"{name}-queue", "NamePrefix": name}
        assert deploy.translate(sam, "us-east-1", params) == deploy._translate_now(
            deploy.load_template(), "us-east-1", params
        )
    assert deploy._translation_without_values(json.dumps([sam, "us-east-1"], sort_keys=True))
    # a template SAM takes a value from
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "aliased.yaml"
    path.write_text(ALIASED)
    aliased = deploy.load_template(path)
    live = deploy.translate(aliased, "us-east-1", {"Alias": "live", "Prefix": "a"})
    canary = deploy.translate(aliased, "us-east-1", {"Alias": "canary", "Prefix": "a"})
    aliases = [
        [r["Properties"]["Name"] for r in t["Resources"].values() if r["Type"] == "AWS::Lambda::Alias"]
        for t in (live, canary)
    ]
    assert aliases == [["live"], ["canary"]]
