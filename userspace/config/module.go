package config

import "sort"

// httpOnlyModuleKeys are the keys of the `ambassador` Module's config that
// Emissary documents or reads (python/ambassador/ir/irambassador.py) and that
// only shape HTTP, Envoy's admin side or Emissary's own pods. tcpmap accepts
// them, so that an existing Module loads unchanged, and says they do nothing.
// The TCP-relevant keys are typed in ModuleConfig; any key in neither list
// is an error, as a misspelling would otherwise pass unnoticed.
var httpOnlyModuleKeys = map[string]bool{
	"add_linkerd_headers":                  true,
	"admin_port":                           true,
	"allow_chunked_length":                 true,
	"auth_enabled":                         true,
	"buffer":                               true,
	"buffer_limit_bytes":                   true,
	"cluster_idle_timeout_ms":              true,
	"cluster_max_connection_lifetime_ms":   true,
	"cluster_request_timeout_ms":           true,
	"cors":                                 true,
	"debug_mode":                           true,
	"default_label_domain":                 true,
	"default_labels":                       true,
	"defaults":                             true,
	"diag_port":                            true,
	"diagnostics":                          true,
	"enable_grpc_http11_bridge":            true,
	"enable_grpc_web":                      true,
	"enable_http10":                        true,
	"envoy_log_format":                     true,
	"envoy_log_path":                       true,
	"envoy_log_type":                       true,
	"envoy_validation_timeout":             true,
	"error_response_overrides":             true,
	"forward_client_cert_details":          true,
	"grpc_stats":                           true,
	"gzip":                                 true,
	"header_case_order":                    true,
	"header_case_overrides":                true,
	"headers_with_underscores_action":      true,
	"healthcheck_server":                   true,
	"ip_allow":                             true,
	"ip_deny":                              true,
	"keepalive":                            true,
	"listener_idle_timeout_ms":             true,
	"liveness_probe":                       true,
	"load_balancer":                        true,
	"lua_scripts":                          true,
	"max_request_headers_kb":               true,
	"merge_slashes":                        true,
	"preserve_external_request_id":         true,
	"proper_case":                          true,
	"prune_unreachable_routes":             true,
	"readiness_probe":                      true,
	"regex_max_size":                       true,
	"regex_type":                           true,
	"reject_requests_with_escaped_slashes": true,
	"retry_policy":                         true,
	"server_name":                          true,
	"service_port":                         true,
	"set_current_client_cert_details":      true,
	"statsd":                               true,
	"strip_matching_host_port":             true,
	"suppress_envoy_headers":               true,
	"use_ambassador_namespace_for_service_resolution": true,
	"use_remote_address":                              true,
	"x_forwarded_proto_redirect":                      true,
	"xff_num_trusted_hops":                            true,
}

// takeHTTPOnlyModuleKeys removes the HTTP-only keys from a Module
// document's spec.config, before strict decoding, and returns them sorted.
func takeHTTPOnlyModuleKeys(obj map[string]any) []string {
	cfg, ok := lookup(obj, "spec", "config").(map[string]any)
	if !ok {
		return nil
	}
	var keys []string
	for k := range cfg {
		if httpOnlyModuleKeys[k] {
			keys = append(keys, k)
			delete(cfg, k)
		}
	}
	sort.Strings(keys)
	return keys
}
