use super::*;

const BOOTSTRAP: &str = r#"
static_resources:
  listeners:
  - name: edge
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          http_filters:
          - name: other-plugin
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config: { name: authz, root_id: authz, vm_config: { vm_id: authz } }
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: tollgate
                allow_on_headers_stop_iteration: true
                vm_config:
                  vm_id: tg
                  environment_variables:
                    host_env_keys: [K1, K2]
                    key_values: { K2: inline-value, K3: 7 }
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{"limits": []}'
  clusters:
  - name: llm
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        http_filters:
        - name: envoy.filters.http.wasm
          typed_config:
            "@type": type.googleapis.com/udpa.type.v1.TypedStruct
            type_url: type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
            value:
              config:
                root_id: tollgate
                vm_config: { vm_id: tg }
                configuration: { "@type": type.googleapis.com/google.protobuf.Struct, value: {} }
  - name: ratelimit
"#;

fn load(text: &str) -> Vec<Yaml> {
    match classify(text).unwrap() {
        Document::Envoy(docs) => docs,
        Document::Tollgate => panic!("not taken for an Envoy document"),
    }
}

#[test]
fn every_tollgate_filter_is_found_and_named_by_its_place_and_other_plugins_are_skipped() {
    let (found, skipped) = filters(&load(BOOTSTRAP));
    let labels: Vec<&str> = found.iter().map(|f| f.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            r#"filter "tollgate" (listener "edge", http_filters[1])"#,
            r#"filter "tollgate" (cluster "llm", upstream http_filters[0])"#,
        ]
    );
    assert_eq!(
        skipped,
        [Skipped {
            label: r#"filter "authz" (listener "edge", http_filters[0])"#.to_string()
        }]
    );
    let (down, up) = (&found[0], &found[1]);
    assert_eq!(
        (down.placement, up.placement),
        (Placement::Downstream, Placement::Upstream)
    );
    assert!(down.stop_iteration && !up.stop_iteration);
    assert_eq!(down.configuration.as_deref(), Ok(r#"{"limits": []}"#));
    let why = up.configuration.clone().unwrap_err();
    assert!(why.contains("google.protobuf.Struct"), "{why}");
    assert_eq!(
        static_clusters(&load(BOOTSTRAP)).unwrap(),
        ["llm", "ratelimit"]
    );
}

#[test]
fn the_vm_environment_is_inline_values_first_then_host_env_keys_from_the_shell() {
    let (found, _) = filters(&load(BOOTSTRAP));
    let f = &found[0];
    let shell = |name: &str| (name == "K1").then(|| "from-shell".to_string());
    let cases = [
        ("K1", EnvLookup::Shell("from-shell".into())),
        ("K2", EnvLookup::Inline("inline-value".into())),
        ("K3", EnvLookup::Inline("7".into())),
        ("K4", EnvLookup::NotPassed),
    ];
    for (name, want) in cases {
        assert_eq!(f.lookup(name, &shell), want, "{name}");
    }
    assert_eq!(f.lookup("K1", &|_| None), EnvLookup::NotInShell);
}

#[test]
fn an_istio_envoyfilter_names_each_filter_by_its_patch() {
    let text = r#"
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    patch: { operation: INSERT_BEFORE, value: { name: envoy.filters.http.jwt_authn } }
  - applyTo: HTTP_FILTER
    patch:
      value:
        name: envoy.filters.http.wasm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
          config:
            name: tollgate
            vm_config: { code: { local: { filename: /var/lib/tollgate.wasm } } }
            configuration: { "@type": type.googleapis.com/google.protobuf.StringValue, value: "{}" }
"#;
    let (found, skipped) = filters(&load(text));
    assert!(skipped.is_empty());
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].label, r#"filter "tollgate" (configPatches[1])"#);
    assert_eq!(found[0].configuration.as_deref(), Ok("{}"));
}

#[test]
fn several_yaml_documents_are_numbered_in_labels() {
    let one = "kind: EnvoyFilter\nspec:\n  configPatches:\n  - patch:\n      value:\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n          config: { name: tollgate }\n";
    let text = format!("kind: ConfigMap\n---\n{one}");
    let (found, _) = filters(&load(&text));
    assert_eq!(
        found[0].label,
        r#"filter "tollgate" (document 2, configPatches[0])"#
    );
}

#[test]
fn a_tollgate_configuration_stays_one_even_when_broken_or_empty() {
    for text in [
        r#"{"consumers": []}"#,
        r#"{"consumers": [,]}"#,
        "\u{feff}  {\"limits\": [}",
        "",
        r#"{"static_resources": 1, "x": }"#,
    ] {
        assert!(matches!(classify(text), Ok(Document::Tollgate)), "{text:?}");
    }
    // JSON with an Envoy shape is an Envoy bootstrap.
    assert!(matches!(
        classify(r#"{"static_resources": {"listeners": []}}"#),
        Ok(Document::Envoy(_))
    ));
    // YAML that is neither is refused with a reason, not handed to the JSON parser.
    let e = classify("just: yaml\n").unwrap_err();
    assert!(e.contains("neither"), "{e}");
    let e = classify("a: [\n").unwrap_err();
    assert!(e.contains("not JSON and not valid YAML"), "{e}");
}

#[test]
fn a_few_lines_of_anchors_standing_for_billions_of_nodes_are_refused_before_they_are_built() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
    }
    text.push_str("static_resources: *a9\n");
    let e = classify(&text).unwrap_err();
    assert_eq!(
        e,
        "its aliases expand to more than 1000000 YAML nodes: not an Envoy configuration"
    );
    // A few aliases, as people write them, are fine and resolved.
    let small = "x: &f {name: tollgate}\nstatic_resources: {clusters: [*f, *f]}\n";
    let Document::Envoy(docs) = classify(small).unwrap() else {
        panic!()
    };
    assert_eq!(static_clusters(&docs).unwrap(), ["tollgate", "tollgate"]);
}
