//! Gatekeeper registration against real `mexec-gatekeeper` and `mexecd`
//! processes: a live member's name cannot be taken from another address,
//! names and fields are bounded, the gatekeeper reaches a node only at the
//! address it registered from, and an unreachable node reads the same
//! whatever listens (or not) at its port.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use mexec_common::connector::Connector;
use mexec_common::farm::CLIENT_TIMEOUTS;
use mexec_common::token::Token;
use mexec_proto::v1::gatekeeper_client::GatekeeperClient;
use mexec_proto::v1::{
    join_request, run_request, run_response, ClusterStatusReply, ClusterStatusRequest, JobSpec,
    JoinRequest, JoinResponse, LoadReport, Register, RunRequest,
};
use mexec_testkit::{wait_until, Executor, Gatekeeper};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic::{Code, Request, Status, Streaming};

/// A membership stream held open by the test, as an executor would.
struct Joined {
    _requests: mpsc::Sender<JoinRequest>,
    _responses: Streaming<JoinResponse>,
}

async fn register(
    gatekeeper: &str,
    node: &str,
    address: &str,
    port: u32,
) -> Result<Joined, Status> {
    register_from(None, None, gatekeeper, node, address, port).await
}

/// Registers over a connection from `source` (an address of this host),
/// with `token` when given.
async fn register_from(
    source: Option<IpAddr>,
    token: Option<&Token>,
    gatekeeper: &str,
    node: &str,
    address: &str,
    port: u32,
) -> Result<Joined, Status> {
    let target: SocketAddr = gatekeeper.parse().unwrap();
    let channel = Endpoint::from_shared(format!("http://{gatekeeper}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            if let Some(source) = source {
                socket.bind(SocketAddr::new(source, 0))?;
            }
            let stream = socket.connect(target).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }))
        .await
        .unwrap();
    let mut client = GatekeeperClient::new(channel).max_encoding_message_size(4 << 20);
    let (tx, rx) = mpsc::channel(4);
    let message = |msg| JoinRequest { msg: Some(msg) };
    tx.send(message(join_request::Msg::Register(Register {
        node: node.into(),
        address: address.into(),
        port,
    })))
    .await
    .unwrap();
    tx.send(message(join_request::Msg::Load(LoadReport {
        node: node.into(),
        slots: 1,
        ..LoadReport::default()
    })))
    .await
    .unwrap();
    let mut request = Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        token.attach(request.metadata_mut());
    }
    let responses = client.join(request).await?.into_inner();
    Ok(Joined {
        _requests: tx,
        _responses: responses,
    })
}

async fn status(gatekeeper: &str) -> Result<ClusterStatusReply, Status> {
    let mut client = GatekeeperClient::connect(format!("http://{gatekeeper}"))
        .await
        .unwrap();
    Ok(client
        .cluster_status(ClusterStatusRequest {})
        .await?
        .into_inner())
}

async fn member_names(gatekeeper: &str) -> Vec<String> {
    let reply = status(gatekeeper).await.unwrap();
    reply
        .nodes
        .iter()
        .map(|n| n.load.as_ref().map(|l| l.node.clone()).unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn a_live_members_name_cannot_be_taken_from_another_address() {
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, "registration-secret\n").unwrap();
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let token_arg = token_path.to_str().unwrap();
    let token = Token::from_file(&token_path).unwrap();
    // Listening on every address, so that peers may come from 127.0.0.1
    // and 127.0.0.2 alike.
    let gatekeeper =
        Gatekeeper::start_listening("0.0.0.0:0".parse().unwrap(), &["--token-file", token_arg]);
    let port = gatekeeper.address().rsplit_once(':').unwrap().1.to_owned();
    let gk = format!("127.0.0.1:{port}");
    let owner = Executor::start("n1", 1, &["--gatekeeper", &gk, "--token-file", token_arg]);
    assert!(wait_until(Duration::from_secs(10), || owner
        .log_text()
        .contains("joined the cluster")));
    let thief_ip: IpAddr = "127.0.0.2".parse().unwrap();
    let refused = register_from(Some(thief_ip), Some(&token), &gk, "n1", "", 7460)
        .await
        .err()
        .expect("the name was taken over");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let text = refused.message();
    assert!(text.contains("registered from 127.0.0.1"), "{text}");
    assert!(text.contains("a registration from 127.0.0.2"), "{text}");
    // On the gatekeeper's record too, with both addresses.
    assert!(
        wait_until(Duration::from_secs(5), || gatekeeper
            .log_text()
            .lines()
            .any(|l| l.contains("refused")
                && l.contains("kind=\"denied\"")
                && l.contains("peer=127.0.0.2:")
                && l.contains("registered from 127.0.0.1"))),
        "{}",
        gatekeeper.log_text()
    );
    // The member is still the owner, where it was.
    let connector = Connector::new(None, Some(token.clone()), CLIENT_TIMEOUTS);
    let channel = connector.connect(&gk).await.unwrap();
    let members = GatekeeperClient::new(channel)
        .cluster_status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].address, owner.node());
    // The same name from the owner's address (the node restarting) is
    // not a takeover.
    let again = register_from(
        None,
        Some(&token),
        &gk,
        "n1",
        "",
        u32::from(owner.addr.port()),
    )
    .await;
    assert!(again.is_ok(), "{:?}", again.err());
}

#[tokio::test]
async fn huge_names_and_foreign_addresses_are_refused() {
    let gatekeeper = Gatekeeper::start(&[]);
    let gk = gatekeeper.address();
    let huge = "n".repeat(1900 * 1024);
    let mut held = Vec::new();
    for _ in 0..3 {
        match register(&gk, &huge, "", 7460).await {
            Err(refused) => {
                assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
                assert!(refused.message().contains("over the limit"), "{refused:?}");
            }
            Ok(joined) => held.push(joined),
        }
    }
    // With the names refused, status (and every lease reply) still decodes.
    assert!(member_names(&gk).await.is_empty());

    // Port 0 used to make the gatekeeper use whatever address was given.
    let refused = register(&gk, "evil", "10.9.9.9:22", 0).await.err().unwrap();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    // Without TLS a node is reached only at the address it registered from.
    let refused = register(&gk, "evil", "10.9.9.9:22", 7460)
        .await
        .err()
        .unwrap();
    assert!(refused.message().contains("127.0.0.1"), "{refused:?}");
    assert!(member_names(&gk).await.is_empty());
}

/// What a relayed job hears from the gatekeeper when its only member is
/// registered at `port`.
async fn relay_answer(port: u16) -> String {
    let gatekeeper = Gatekeeper::start(&[]);
    let gk = gatekeeper.address();
    let _joined = register(&gk, "target", "", u32::from(port)).await.unwrap();
    let mut client = GatekeeperClient::connect(format!("http://{gk}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(1);
    tx.send(RunRequest {
        msg: Some(run_request::Msg::Start(JobSpec {
            argv: vec!["true".into()],
            cwd: "/".into(),
            job_id: "probe".into(),
            user: "tester".into(),
            ..JobSpec::default()
        })),
    })
    .await
    .unwrap();
    let answer = match client.run(ReceiverStream::new(rx)).await {
        Err(status) => status,
        Ok(response) => {
            let mut stream = response.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(m)) if matches!(m.msg, Some(run_response::Msg::Exit(_))) => {
                        panic!("the job ran: {m:?}")
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("the stream ended without an answer"),
                    Err(status) => break status,
                }
            }
        }
    };
    drop(tx);
    answer.message().to_owned()
}

#[tokio::test]
async fn an_unreachable_node_reads_the_same_whatever_listens_there() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    // Something that is not an executor: it greets and hangs up.
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = open.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in open.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n");
        }
    });
    let from_closed = relay_answer(closed_port).await;
    let from_open = relay_answer(open_port).await;
    assert!(
        from_closed.contains("node target unreachable"),
        "{from_closed}"
    );
    assert_eq!(from_closed, from_open);
}
