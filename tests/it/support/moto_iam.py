"""Signature checking for a moto server: contrib/e2e.sh and contrib/interop.sh set one up
with it; the Rust rig (Moto in mod.rs) does the same set-up itself and uses --assume.

  moto_iam.py ENDPOINT BUCKET...
      On a moto started with INITIAL_NO_AUTH_ACTION_COUNT=inf: creates an IAM user allowed
      s3:* and sts:AssumeRole, its access key, a role it may assume, and the buckets, then
      POSTs /moto-api/reset-auth so that every later request is verified (SigV4 and IAM
      policy). Prints "ACCESS_KEY SECRET_KEY ROLE_ARN".
  moto_iam.py --assume ENDPOINT ACCESS_KEY SECRET_KEY ROLE_ARN SECONDS
      STS AssumeRole with those keys; prints "ACCESS_KEY SECRET_KEY SESSION_TOKEN".
"""
import json
import sys
import urllib.request

import boto3


def client(service, endpoint, access, secret):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=access, aws_secret_access_key=secret)


def set_up(endpoint, buckets):
    iam = client("iam", endpoint, "bootstrap", "bootstrap")
    iam.create_user(UserName="btrfs-to-s3")
    allow = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:*", "sts:AssumeRole"], "Resource": "*"}]}
    arn = iam.create_policy(PolicyName="backup",
                            PolicyDocument=json.dumps(allow))["Policy"]["Arn"]
    iam.attach_user_policy(UserName="btrfs-to-s3", PolicyArn=arn)
    trust = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
    role = iam.create_role(RoleName="backup",
                           AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    iam.attach_role_policy(RoleName="backup", PolicyArn=arn)
    key = iam.create_access_key(UserName="btrfs-to-s3")["AccessKey"]
    s3 = client("s3", endpoint, "bootstrap", "bootstrap")
    for b in buckets:
        s3.create_bucket(Bucket=b)
    req = urllib.request.Request(endpoint + "/moto-api/reset-auth", data=b"0", method="POST",
                                 headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(req).read()
    print(key["AccessKeyId"], key["SecretAccessKey"], role)


def assume(endpoint, access, secret, role, seconds):
    sts = client("sts", endpoint, access, secret)
    c = sts.assume_role(RoleArn=role, RoleSessionName="itest",
                        DurationSeconds=int(seconds))["Credentials"]
    print(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])


if __name__ == "__main__":
    if sys.argv[1] == "--assume":
        assume(*sys.argv[2:7])
    else:
        set_up(sys.argv[1], sys.argv[2:])
