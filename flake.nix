{
  description = "tasks-server: self-hosted HTTP task server (schedule, retry and record HTTP calls)";

  # pyproject.toml's build backend needs setuptools >= 77 (the SPDX license string);
  # nixos-25.05 ships 78.1 (24.11 had 75.x, which refuses that string).
  # `nix flake lock` writes flake.lock, pinning the branch's current commit
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # runtime dependencies, as in pyproject.toml [project.dependencies]
      runtimeDeps = ps: with ps; [
        starlette
        uvicorn
        aiosqlite
        pycurl # nixpkgs builds it against its own libcurl (HTTP/2, NTLM)
        pydantic
        python-dateutil
        cryptography
        boto3
        croniter
        prometheus-client
        psycopg
        psycopg-pool
        idna
        jinja2
        itsdangerous
        aiosmtplib
      ] ++ psycopg.optional-dependencies.binary or [ ]
        ++ uvicorn.optional-dependencies.standard;

      # pyproject.toml [project.optional-dependencies] test (ruff comes from pkgs)
      testDeps = ps: with ps; [
        pytest
        pytest-asyncio
        pytest-timeout
        httpx
        trustme
        moto
        time-machine
        mypy
        types-python-dateutil
        boto3-stubs
        mypy-boto3-s3
        openapi-spec-validator
        jsonschema
        import-linter
        selenium
        aiosmtpd
      ]
      # newer additions to nixpkgs: taken when the pinned nixpkgs has them
      ++ builtins.concatMap (name: if ps ? ${name} then [ ps.${name} ] else [ ])
        [ "standardwebhooks" "schemathesis" ];
    in
    {
      packages = forAllSystems (pkgs:
        let python = pkgs.python3; in {
          default = python.pkgs.buildPythonApplication {
            pname = "tasks-server";
            version = "0.1.0";
            pyproject = true;
            src = pkgs.lib.fileset.toSource {
              root = ./.;
              fileset = pkgs.lib.fileset.unions [ ./pyproject.toml ./README.md ./tasks_server ];
            };
            build-system = [ python.pkgs.setuptools ];
            dependencies = runtimeDeps python.pkgs;
            # the test suite runs in the dev shell and CI (sh scripts/check); here, a smoke test
            pythonImportsCheck = [ "tasks_server.app" "tasks_server.cli.main" ];
            postInstallCheck = ''
              $out/bin/tasks-server --version
            '';
            meta = {
              description = "Self-hosted HTTP task server";
              license = pkgs.lib.licenses.mit;
              mainProgram = "tasks-server";
            };
          };
        });

      apps = forAllSystems (pkgs: {
        default = {
          type = "app";
          program = "${self.packages.${pkgs.system}.default}/bin/tasks-server";
        };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (ps: runtimeDeps ps ++ testDeps ps))
            pkgs.ruff
            pkgs.hadolint
            pkgs.curl
            pkgs.sqlite
          ];
          shellHook = ''
            echo "tasks-server dev shell: sh scripts/check runs format, lint, types and tests"
          '';
        };
      });

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.system}.default;
      });

      formatter = forAllSystems (pkgs: pkgs.nixpkgs-fmt);
    };
}
