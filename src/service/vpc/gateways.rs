//! Internet gateways and route tables: read-only views of the VPC records
//! (`DescribeInternetGateways`, `DescribeRouteTables`).

use super::*;

/// `DescribeInternetGateways`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeInternetGatewaysRequest {
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub internet_gateway_ids: Vec<String>,
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// `DescribeInternetGateways`' result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeInternetGatewaysResult {
    pub internet_gateways: Vec<InternetGateway>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// An internet gateway as EC2 shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InternetGateway {
    pub attachments: Vec<InternetGatewayAttachment>,
    pub internet_gateway_id: String,
    pub owner_id: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

/// Where an internet gateway is attached.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InternetGatewayAttachment {
    pub state: String,
    pub vpc_id: String,
}

/// `DescribeRouteTables`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeRouteTablesRequest {
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub route_table_ids: Vec<String>,
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// `DescribeRouteTables`' result.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeRouteTablesResult {
    pub route_tables: Vec<RouteTable>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// A route table as EC2 shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouteTable {
    pub associations: Vec<RouteTableAssociation>,
    pub propagating_vgws: Vec<serde_json::Value>,
    pub route_table_id: String,
    pub routes: Vec<Route>,
    pub vpc_id: String,
    pub owner_id: String,
}

/// The main association of a route table.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouteTableAssociation {
    pub main: bool,
    pub route_table_association_id: String,
    pub route_table_id: String,
    pub association_state: CidrBlockState,
}

/// One route.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Route {
    pub destination_cidr_block: String,
    pub gateway_id: String,
    pub origin: String,
    pub state: String,
}

const IGW_FILTERS: &[&str] = &[
    "attachment.state",
    "attachment.vpc-id",
    "internet-gateway-id",
    "owner-id",
    "tag-key",
];

const ROUTE_TABLE_FILTERS: &[&str] = &[
    "association.main",
    "association.route-table-association-id",
    "association.route-table-id",
    "owner-id",
    "route-table-id",
    "route.destination-cidr-block",
    "route.gateway-id",
    "route.origin",
    "route.state",
    "vpc-id",
    "tag-key",
    "association.gateway-id",
    "association.subnet-id",
    "route.destination-ipv6-cidr-block",
    "route.destination-prefix-list-id",
    "route.egress-only-internet-gateway-id",
    "route.instance-id",
    "route.nat-gateway-id",
    "route.transit-gateway-id",
    "route.vpc-peering-connection-id",
];

impl Service {
    /// `DescribeInternetGateways`: the gateways of the caller's VPCs (the default VPC has one).
    pub fn describe_internet_gateways(
        &mut self,
        caller: &Caller,
        req: DescribeInternetGatewaysRequest,
    ) -> Result<DescribeInternetGatewaysResult> {
        let paging = Paging::of(req.max_results, &req.next_token);
        filter::check_names(&req.filters, IGW_FILTERS)?;
        self.default_vpc(caller)?;
        self.store
            .read(|db| -> Result<DescribeInternetGatewaysResult> {
                let vpcs = db.vpcs(&caller.region, &caller.account)?;
                for id in &req.internet_gateway_ids {
                    if !vpcs
                        .iter()
                        .any(|v| v.internet_gateway_id.as_deref() == Some(id.as_str()))
                    {
                        return Err(Error::new(
                            ErrorCode::InvalidInternetGatewayIdNotFound,
                            format!("The internetGateway ID '{id}' does not exist"),
                        ));
                    }
                }
                let mut out = Vec::new();
                for v in &vpcs {
                    let Some(igw) = &v.internet_gateway_id else {
                        continue;
                    };
                    if !req.internet_gateway_ids.is_empty()
                        && !req.internet_gateway_ids.contains(igw)
                    {
                        continue;
                    }
                    let tags = db.tags_of(igw)?;
                    let keep = filter::matches(&req.filters, |name| match name {
                        "attachment.state" => vec!["available".into()],
                        "attachment.vpc-id" => vec![v.vpc_id.clone()],
                        "internet-gateway-id" => vec![igw.clone()],
                        "owner-id" => vec![v.owner_id.clone()],
                        n => filter::tag_values(&tags, n).unwrap_or_default(),
                    });
                    if keep {
                        out.push(InternetGateway {
                            attachments: vec![InternetGatewayAttachment {
                                state: "available".into(),
                                vpc_id: v.vpc_id.clone(),
                            }],
                            internet_gateway_id: igw.clone(),
                            owner_id: v.owner_id.clone(),
                            tags: tags_of(db, igw)?,
                        });
                    }
                }
                let (internet_gateways, next_token) =
                    crate::service::paging::page(out, &paging, 5, 1000)?;
                Ok(DescribeInternetGatewaysResult {
                    internet_gateways,
                    next_token,
                })
            })
    }

    /// `DescribeRouteTables`: each VPC's main table (its block routed locally,
    /// and everything else to its internet gateway when it has one).
    pub fn describe_route_tables(
        &mut self,
        caller: &Caller,
        req: DescribeRouteTablesRequest,
    ) -> Result<DescribeRouteTablesResult> {
        let paging = Paging::of(req.max_results, &req.next_token);
        filter::check_names(&req.filters, ROUTE_TABLE_FILTERS)?;
        self.default_vpc(caller)?;
        self.store.read(|db| -> Result<DescribeRouteTablesResult> {
            let vpcs = db.vpcs(&caller.region, &caller.account)?;
            for id in &req.route_table_ids {
                if !vpcs.iter().any(|v| v.main_route_table_id == *id) {
                    return Err(Error::new(
                        ErrorCode::InvalidRouteTableIdNotFound,
                        format!("The routeTable ID '{id}' does not exist"),
                    ));
                }
            }
            let mut out = Vec::new();
            for v in &vpcs {
                let rtb = &v.main_route_table_id;
                if !req.route_table_ids.is_empty() && !req.route_table_ids.contains(rtb) {
                    continue;
                }
                let mut routes = vec![Route {
                    destination_cidr_block: v.cidr_block.clone(),
                    gateway_id: "local".into(),
                    origin: "CreateRouteTable".into(),
                    state: "active".into(),
                }];
                if let Some(igw) = &v.internet_gateway_id {
                    routes.push(Route {
                        destination_cidr_block: "0.0.0.0/0".into(),
                        gateway_id: igw.clone(),
                        origin: "CreateRoute".into(),
                        state: "active".into(),
                    });
                }
                let association = ids::derived_id(IdKind::RouteTableAssociation, rtb);
                let tags = db.tags_of(rtb)?;
                let keep = filter::matches(&req.filters, |name| match name {
                    "association.main" => vec!["true".into()],
                    "association.route-table-association-id" => vec![association.clone()],
                    "association.route-table-id" | "route-table-id" => vec![rtb.clone()],
                    "owner-id" => vec![v.owner_id.clone()],
                    "route.destination-cidr-block" => routes
                        .iter()
                        .map(|r| r.destination_cidr_block.clone())
                        .collect(),
                    "route.gateway-id" => routes.iter().map(|r| r.gateway_id.clone()).collect(),
                    "route.origin" => routes.iter().map(|r| r.origin.clone()).collect(),
                    "route.state" => vec!["active".into()],
                    "vpc-id" => vec![v.vpc_id.clone()],
                    n => filter::tag_values(&tags, n).unwrap_or_default(),
                });
                if keep {
                    out.push(RouteTable {
                        associations: vec![RouteTableAssociation {
                            main: true,
                            route_table_association_id: association,
                            route_table_id: rtb.clone(),
                            association_state: CidrBlockState {
                                state: "associated".into(),
                            },
                        }],
                        propagating_vgws: Vec::new(),
                        route_table_id: rtb.clone(),
                        routes,
                        vpc_id: v.vpc_id.clone(),
                        owner_id: v.owner_id.clone(),
                    });
                }
            }
            let (route_tables, next_token) = crate::service::paging::page(out, &paging, 5, 100)?;
            Ok(DescribeRouteTablesResult {
                route_tables,
                next_token,
            })
        })
    }
}
