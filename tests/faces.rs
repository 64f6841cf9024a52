//! The two container-network faces through their real listeners with a real HTTP
//! client, route by route: Container Station's (seed 002) on the management
//! listener and libnetwork's (seed 001) on its own, every status code and error
//! body, and a table of bad inputs. Containers are network namespaces this test
//! makes (and removes). Needs root (ignored without it unless
//! TUNLOOM_REQUIRE_NETNS=1).

mod common;

use common::Needs;
use serde_json::{json, Value};
use tunloom_lab::netns::Netns;
use tunloom_lab::testbed::{api_request, OneHost};

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

const CS: &str = "/container-station/api/v1";

/// The addresses on the container's eth0, as `ip -4 -o addr` lists them.
fn eth0(ns: &Netns) -> String {
    let out = ns
        .run(
            "ip",
            &["-4", "-o", "addr", "show", "eth0"],
            std::time::Duration::from_secs(5),
        )
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Test addresses stay in 198.19.0.0/16: the Weave range in its lower half, the
/// networks' pool in its upper half.
const CONFIG: &str = "[ipam]\nrange = \"198.19.0.0/17\"\n[networks]\npool = \"198.19.128.0/17\"\n";

fn container_station_face_route_by_route() {
    let mut h = OneHost::create("csf", &common::exe(), &format!("[node]\nname = \"cs\"\n{CONFIG}")).unwrap();
    h.start().unwrap();
    let ns = h.ns.name.clone();
    let call = |method: &str, path: &str, body: Option<Value>| -> (u16, Value) {
        let (s, b) = api_request(
            &ns,
            6786,
            method,
            path,
            body.map(|b| b.to_string().into_bytes()),
            &[("content-type", "application/json")],
        )
        .unwrap();
        (s, if b.is_empty() { Value::Null } else { json_of(&b) })
    };
    let c1 = Netns::create("tlcs-c1").unwrap();

    // The default network is listed, first.
    let (s, list) = call("GET", &format!("{CS}/networks"), None);
    assert_eq!(s, 200);
    assert_eq!(list[0]["Name"], "weave");
    assert_eq!(list[0]["Attachable"], false);

    // The seed's own create example.
    let (s, made) = call(
        "POST",
        &format!("{CS}/networks"),
        Some(json!({"name": "doc_test_network", "check_duplicate": true})),
    );
    assert_eq!(s, 200, "{made}");
    let id = made["Id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 64);
    assert_eq!(made["Warning"], "");
    // Its duplicate: the seed's exact body.
    let (s, dup) = call(
        "POST",
        &format!("{CS}/networks"),
        Some(json!({"name": "doc_test_network", "check_duplicate": true})),
    );
    assert_eq!(
        (s, dup.clone()),
        (
            400,
            json!({"error": {"code": 400, "message": "409 Client Error: Conflict (\"network with name doc_test_network already exists\")"}})
        )
    );

    // Inspect by name (the seed's example path), id, id prefix, and without the prefix.
    for path in [
        format!("{CS}/networks/doc_test_network/inspect"),
        format!("{CS}/networks/{id}"),
        format!("{CS}/networks/{}", &id[..12]),
        "/api/v1/networks/doc_test_network".to_string(),
    ] {
        let (s, n) = call("GET", &path, None);
        assert_eq!(s, 200, "{path}: {n}");
        assert_eq!(n["Id"], id.as_str());
        assert_eq!(n["IPAM"]["Config"][0]["Subnet"], "198.19.128.0/24");
        assert_eq!(n["IPAM"]["Config"][0]["Gateway"], "198.19.128.1");
        for key in [
            "Name",
            "Id",
            "Created",
            "Scope",
            "Driver",
            "EnableIPv6",
            "IPAM",
            "Internal",
            "Attachable",
            "Ingress",
            "ConfigFrom",
            "ConfigOnly",
            "Containers",
            "Options",
            "Labels",
        ] {
            assert!(n.get(key).is_some(), "{key} missing from {n}");
        }
    }

    // Connect (the seed's body), then inspect shows the container.
    let (s, r) = call(
        "POST",
        &format!("{CS}/networks/doc_test_network/connect"),
        Some(json!({"container": "tlcs-c1"})),
    );
    assert_eq!((s, r), (200, json!({})));
    let (_, n) = call("GET", &format!("{CS}/networks/doc_test_network/inspect"), None);
    let c = &n["Containers"]["tlcs-c1"];
    assert_eq!(c["IPv4Address"], "198.19.128.2/24", "{n}");
    assert_eq!(c["MacAddress"], "02:42:c6:13:80:02");
    assert_eq!(c["Name"], "tlcs-c1");
    // The container really has it: eth0 with the address, a default route.
    assert!(eth0(&c1).contains("198.19.128.2/24"));
    let routes = c1.run("ip", &["route"], std::time::Duration::from_secs(5)).unwrap();
    assert!(String::from_utf8_lossy(&routes.stdout).contains("default via 198.19.128.1"));

    // The table of bad inputs → the documented 4xx and body.
    let nf = |what: &str| format!("404 Client Error: Not Found (\"{what}\")");
    let cases: Vec<(&str, String, Option<Value>, u16, String)> = vec![
        ("GET", format!("{CS}/networks/nope"), None, 400, nf("network nope not found")),
        ("DELETE", format!("{CS}/networks/nope"), None, 400, nf("network nope not found")),
        (
            "POST",
            format!("{CS}/networks"),
            Some(json!({"name": "o", "ipam": {"Config": [{"Subnet": "198.19.128.0/25"}]}})),
            400,
            "409 Client Error: Conflict (\"subnet 198.19.128.0/25 overlaps network doc_test_network (198.19.128.0/24)\")".into(),
        ),
        (
            "POST",
            format!("{CS}/networks"),
            Some(json!({"name": "o", "ipam": {"Config": [{"Subnet": "198.300.0.0/24"}]}})),
            400,
            "400 Client Error: Bad Request (\"Subnet \"198.300.0.0/24\" is not an IPv4 CIDR such as 10.48.3.0/24\")".into(),
        ),
        (
            "POST",
            format!("{CS}/networks"),
            Some(json!({"name": "o", "ipam": {"Config": [{"Subnet": "198.19.200.0/24", "Gateway": "198.19.201.1"}]}})),
            400,
            "400 Client Error: Bad Request (\"gateway 198.19.201.1 is not a host address of subnet 198.19.200.0/24\")".into(),
        ),
        (
            "POST",
            format!("{CS}/networks/doc_test_network/connect"),
            Some(json!({"container": "tlcs-missing"})),
            400,
            nf("no network namespace at /run/netns/tlcs-missing"),
        ),
        (
            "POST",
            format!("{CS}/networks/doc_test_network/connect"),
            Some(json!({"container": "tlcs-c1"})),
            400,
            "409 Client Error: Conflict (\"container tlcs-c1 is already attached to network doc_test_network\")".into(),
        ),
        (
            "POST",
            format!("{CS}/networks/doc_test_network/disconnect"),
            Some(json!({"container": "tlcs-other"})),
            400,
            nf("container tlcs-other is not connected to network doc_test_network"),
        ),
        (
            "DELETE",
            format!("{CS}/networks/doc_test_network"),
            None,
            400,
            format!("409 Client Error: Conflict (\"network doc_test_network id {id} has active endpoints (1)\")"),
        ),
        (
            "DELETE",
            format!("{CS}/networks/weave"),
            None,
            400,
            "403 Client Error: Forbidden (\"the default network is predefined: it cannot be removed, and its addresses are the Weave API's\")".into(),
        ),
    ];
    for (method, path, body, status, message) in cases {
        let (s, b) = call(method, &path, body.clone());
        assert_eq!(
            (s, b["error"]["code"].as_u64()),
            (status, Some(u64::from(status))),
            "{method} {path} {body:?}: {b}"
        );
        assert_eq!(b["error"]["message"], message.as_str(), "{method} {path} {body:?}");
    }
    // Malformed JSON, and a body over the listener's limit.
    let raw = |body: Vec<u8>| api_request(&ns, 6786, "POST", &format!("{CS}/networks"), Some(body), &[]).unwrap();
    let (s, b) = raw(b"{\"name\": ".to_vec());
    assert_eq!(s, 400);
    assert!(json_of(&b)["error"]["message"]
        .as_str()
        .unwrap()
        .contains("malformed JSON"));
    let (s, _) = raw(vec![b' '; 3 << 20]);
    assert_eq!(s, 413);

    // Disconnect removes the veth and frees the address; remove; prune.
    let (s, r) = call(
        "POST",
        &format!("{CS}/networks/doc_test_network/disconnect"),
        Some(json!({"container": "tlcs-c1", "forct": false})),
    );
    assert_eq!((s, r), (200, json!({})));
    let links = c1
        .run("ip", &["-o", "link"], std::time::Duration::from_secs(5))
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("eth0"),
        "the veth is gone"
    );
    let (_, n) = call("GET", &format!("{CS}/networks/doc_test_network"), None);
    assert_eq!(n["Containers"], json!({}));
    assert_eq!(
        call("DELETE", &format!("{CS}/networks/doc_test_network"), None),
        (200, json!({}))
    );
    for name in ["doc_test_network_1", "doc_test_network_2"] {
        assert_eq!(
            call("POST", &format!("{CS}/networks"), Some(json!({"name": name}))).0,
            200
        );
    }
    assert_eq!(
        call("DELETE", &format!("{CS}/networks/"), None),
        (
            200,
            json!({"NetworksDeleted": ["doc_test_network_1", "doc_test_network_2"]})
        )
    );
    assert_eq!(
        call("DELETE", &format!("{CS}/networks/"), None),
        (200, json!({"NetworksDeleted": null}))
    );
    drop(c1);
    h.stop(false);
}

fn libnetwork_face_route_by_route() {
    let mut h = OneHost::create("lnf", &common::exe(), &format!("[node]\nname = \"ln\"\n{CONFIG}")).unwrap();
    h.start().unwrap();
    let ns = h.ns.name.clone();
    let call = |method: &str, path: &str, body: Option<Value>| -> (u16, String) {
        let (s, b) = api_request(&ns, 6785, method, path, body.map(|b| b.to_string().into_bytes()), &[]).unwrap();
        (s, String::from_utf8_lossy(&b).into_owned())
    };
    let j = |s: &str| -> Value { json_of(s.as_bytes()) };
    let c1 = Netns::create("tlln-c1").unwrap();

    // The seed's create example: 200 with the id as a JSON string.
    let (s, b) = call(
        "POST",
        "/networks",
        Some(json!({"name": "foo", "network_type": "", "options": {}})),
    );
    assert_eq!(s, 200, "{b}");
    let nid = j(&b).as_str().unwrap().to_string();
    let (s, b) = call("POST", "/networks", Some(json!({"name": "foo"})));
    assert_eq!((s, b.as_str()), (403, "network with name foo already exists\n"));
    let (s, b) = call("GET", &format!("/networks/{nid}"), None);
    assert_eq!(s, 200);
    assert_eq!(
        j(&b),
        json!({"name": "foo", "id": nid, "type": "tunloom", "endpoints": []})
    );
    // Filters: by name, by partial id, both (400), no match (null).
    let (s, b) = call("GET", "/networks?name=foo", None);
    assert_eq!((s, j(&b)[0]["id"].as_str()), (200, Some(nid.as_str())));
    let (_, b) = call("GET", &format!("/networks?partial-id={}", &nid[..6]), None);
    assert_eq!(j(&b).as_array().unwrap().len(), 1);
    assert_eq!(
        call("GET", "/networks?name=a&partial-id=b", None),
        (400, "Unsupported query\n".into())
    );
    assert_eq!(call("GET", "/networks?name=nothing", None), (200, "null\n".into()));
    assert_eq!(
        call("GET", "/networks/nope", None),
        (404, "Resource not found: Network\n".into())
    );

    // Endpoints: the seed's create example, list, get, filters.
    let (s, b) = call(
        "POST",
        &format!("/networks/{nid}/endpoints"),
        Some(json!({"name": "baz", "exposed_ports": [{"proto": 6, "port": 8080}], "port_mapping": null})),
    );
    assert_eq!(s, 200, "{b}");
    let eid = j(&b).as_str().unwrap().to_string();
    let (s, b) = call(
        "POST",
        &format!("/networks/{nid}/endpoints"),
        Some(json!({"name": "baz"})),
    );
    assert_eq!(
        (s, b.as_str()),
        (403, "service endpoint with name baz already exists\n")
    );
    let (s, b) = call("GET", &format!("/networks/{nid}/endpoints/{eid}"), None);
    assert_eq!((s, j(&b)), (200, json!({"id": eid, "name": "baz", "network": "foo"})));
    let (_, b) = call("GET", &format!("/networks/{nid}/endpoints?name=baz"), None);
    assert_eq!(j(&b)[0]["id"].as_str(), Some(eid.as_str()));
    assert_eq!(
        call("GET", &format!("/networks/{nid}/endpoints?partial-id=ffff"), None).1,
        "null\n"
    );
    assert_eq!(
        call("GET", &format!("/networks/{nid}/endpoints/nope"), None),
        (404, "Resource not found: Endpoint\n".into())
    );

    // Join: the sandbox key; the container has its interface; join twice is 400.
    let (s, b) = call(
        "POST",
        &format!("/networks/{nid}/endpoints/{eid}/containers"),
        Some(json!({"container_id": "tlln-c1", "host_name": null, "use_default_sandbox": true})),
    );
    assert_eq!((s, j(&b)), (200, json!("/run/netns/tlln-c1")));
    assert!(eth0(&c1).contains("198.19.128.2/24"));
    let (s, _) = call(
        "POST",
        &format!("/networks/{nid}/endpoints/{eid}/containers"),
        Some(json!({"container_id": "tlln-c1"})),
    );
    assert_eq!(s, 400);
    // Deleting what is in use is 403.
    assert_eq!(call("DELETE", &format!("/networks/{nid}/endpoints/{eid}"), None).0, 403);
    assert_eq!(call("DELETE", &format!("/networks/{nid}"), None).0, 403);
    // Bad bodies.
    for (path, body) in [
        ("/networks".to_string(), "{".to_string()),
        ("/networks".to_string(), "{\"name\": 3}".to_string()),
        (
            format!("/networks/{nid}/endpoints"),
            "{\"name\": \"x\", \"exposed_ports\": [{\"proto\": 6}]}".into(),
        ),
        (format!("/networks/{nid}/endpoints/{eid}/containers"), "{}".into()),
    ] {
        let (s, b) = api_request(&ns, 6785, "POST", &path, Some(body.clone().into_bytes()), &[]).unwrap();
        let b = String::from_utf8_lossy(&b);
        assert_eq!(s, 400, "{path} {body}: {b}");
        assert!(b.starts_with("Invalid body: "), "{b}");
    }
    // Leave, delete endpoint, delete network.
    assert_eq!(
        call(
            "DELETE",
            &format!("/networks/{nid}/endpoints/{eid}/containers/tlln-c1"),
            None
        )
        .0,
        200
    );
    let links = c1
        .run("ip", &["-o", "link"], std::time::Duration::from_secs(5))
        .unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("eth0"));
    assert_eq!(
        call("DELETE", &format!("/networks/{nid}/endpoints/{eid}"), None),
        (200, String::new())
    );
    assert_eq!(call("DELETE", &format!("/networks/{nid}"), None), (200, String::new()));
    assert_eq!(call("GET", &format!("/networks/{nid}"), None).0, 404);
    let (s, b) = call("GET", "/services", None);
    assert_eq!(s, 404);
    assert!(b.contains("not served yet"));
    drop(c1);
    h.stop(false);
}

fn main() -> std::process::ExitCode {
    common::main(&[
        (
            "container_station_face_route_by_route",
            Needs::Netns,
            container_station_face_route_by_route,
        ),
        (
            "libnetwork_face_route_by_route",
            Needs::Netns,
            libnetwork_face_route_by_route,
        ),
    ])
}
