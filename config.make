# shellcheck shell=sh
# shellcheck disable=SC2154 # the variables come from nginx's configure and from config
# Sourced by nginx's auto/make after `config` (see there): appends the Makefile rule that
# builds the Rust static library, and makes the module's .so depend on it.
#
# cargo tracks its sources itself, so the rule always runs it (an empty rule without
# prerequisites is always out of date: the portable FORCE idiom); "+" hands it make's
# jobserver, so `make -jN` bounds cargo's jobs too. nginx generates the module
# table (ngx_modules, ngx_module_names, ngx_module_order) in objs/<module>_modules.c, while
# the crate also defines it for plain `cargo build` (a cdylib nginx loads directly):
# auto/cf-access-staticlib makes the crate's copies local, so the generated table is the one
# linked, and gives the module its C name if the crate only has the Rust one.

cat <<END >>"$NGX_MAKEFILE"

# ngx_http_cf_access_module: the Rust static library ($ngx_cf_access_src)
ngx_cf_access_force:

$ngx_cf_access_lib: ngx_cf_access_force
	+NGINX_SOURCE_DIR="$ngx_cf_access_nginx_src" \\
		NGINX_BUILD_DIR="$ngx_cf_access_objs" \\
		$NGX_CARGO rustc --locked --lib --crate-type staticlib \\
		--manifest-path "$ngx_cf_access_src/Cargo.toml" -p ngx-http-cf-access \\
		--no-default-features --profile "$NGX_CARGO_PROFILE" \\
		--target-dir "$ngx_cf_access_target" $NGX_CARGO_OPT
	sh "$ngx_cf_access_src/auto/cf-access-staticlib" "$ngx_cf_access_lib" "$OBJCOPY"

$NGX_OBJS/ngx_http_cf_access_module$ngx_modext: $ngx_cf_access_lib
END
