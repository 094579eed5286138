//! `DescribeInstanceAttribute` and `ModifyInstanceAttribute`.
