"""Human outcomes REST API. Thin: parse, call one service, serialize."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db.models import Prefetch
from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import exceptions, serializers, status
from rest_framework.authentication import BasicAuthentication, SessionAuthentication
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.pagination import CursorPagination
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response

from agents.authentication import AgentTokenAuthentication
from agents.models import Agent, Workflow
from approvals.selectors import workflows_for_user
from config.exceptions import Conflict
from shadow import selectors, services
from shadow.models import Comparison, HumanOutcome, OutcomeSource

AUTH_NOTE = (
    "Who may call this: people, never agents. Authenticate with a Django session (the "
    "web login; send the CSRF token) or HTTP Basic with a user's name and password, "
    "over HTTPS. The user must be a reviewer of the workflow (its reviewer group) or a "
    "manager. An agent token is refused with 403: an agent that could post what the "
    "human did would grade its own work. A workflow the user cannot see is a 404."
)


class IsHumanReviewer(BasePermission):
    message = ("Human outcomes come from people: use a reviewer's or manager's session or "
               "HTTP Basic credentials. Agent tokens are refused.")

    def has_permission(self, request: Request, view: object) -> bool:
        user = request.user
        if isinstance(user, Agent) or not (user and user.is_authenticated):
            return False
        return workflows_for_user(user).exists()


class OutcomeCreateSerializer(serializers.Serializer):
    workflow = serializers.SlugField(help_text="Workflow slug, e.g. support-triage")
    case_ref = serializers.CharField(max_length=200, help_text="Matched against run.case_ref")
    tool = serializers.CharField(max_length=100, help_text="The tool the human used")
    arguments = serializers.JSONField(required=False, default=dict)
    text = serializers.CharField(required=False, allow_blank=True, default="",
                                 max_length=50_000, trim_whitespace=False)
    external_id = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=200,
        help_text="Your id for this outcome; repeating it returns the same outcome (200)")

    def validate_arguments(self, value: object) -> object:
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be a JSON object")
        return value


class ComparisonSerializer(serializers.ModelSerializer):
    field_diff = serializers.SerializerMethodField()

    class Meta:
        model = Comparison
        fields = ["id", "proposal", "comparator", "verdict", "score", "field_diff",
                  "created_at"]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_field_diff(self, obj: Comparison) -> dict:
        return selectors.shown_diff_dict(obj)


class OutcomeSerializer(serializers.ModelSerializer):
    workflow = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    tool = serializers.CharField(source="tool_name", read_only=True)
    comparisons = serializers.SerializerMethodField()

    class Meta:
        model = HumanOutcome
        fields = ["id", "workflow", "case_ref", "tool", "arguments", "text", "source",
                  "external_id", "created_at", "comparisons"]
        read_only_fields = fields

    @extend_schema_field(ComparisonSerializer(many=True))
    def get_comparisons(self, obj: HumanOutcome) -> list:
        # .all() so the list view's prefetch serves it (no query per outcome).
        comparisons = sorted(obj.comparisons.all(), key=lambda c: c.pk)
        return ComparisonSerializer(comparisons, many=True).data


class OutcomePagination(CursorPagination):
    ordering = ("-id",)


def _visible_workflow(request: Request, slug: str) -> Workflow:
    workflow = workflows_for_user(request.user).filter(slug=slug).first()
    if workflow is None:
        raise Http404("no such workflow, or you are not a reviewer of it")
    return workflow


@extend_schema(
    description="Record what a human actually did for a case; it is compared with the "
                "workflow's shadow proposals of that case. " + AUTH_NOTE,
    request=OutcomeCreateSerializer,
    responses={201: OutcomeSerializer, 200: OutcomeSerializer},
    methods=["POST"],
)
@extend_schema(
    description="Outcomes the user may see, newest first. " + AUTH_NOTE,
    parameters=[OpenApiParameter("workflow", OpenApiTypes.STR, description="workflow slug")],
    responses=OutcomeSerializer(many=True),
    methods=["GET"],
)
@api_view(["GET", "POST"])
@authentication_classes([BasicAuthentication, SessionAuthentication, AgentTokenAuthentication])
@permission_classes([IsHumanReviewer])
def outcomes(request: Request) -> Response:
    if request.method == "GET":
        qs = selectors.outcomes_for_user(request.user).select_related("workflow").prefetch_related(
            Prefetch("comparisons", queryset=Comparison.objects.select_related("proposal__policy")))
        if slug := request.query_params.get("workflow", ""):
            qs = qs.filter(workflow=_visible_workflow(request, slug))
        paginator = OutcomePagination()
        page = paginator.paginate_queryset(qs, request)
        return paginator.get_paginated_response(OutcomeSerializer(page, many=True).data)

    data = OutcomeCreateSerializer(data=request.data)
    data.is_valid(raise_exception=True)
    body = data.validated_data
    workflow = _visible_workflow(request, body["workflow"])
    try:
        result = services.outcome_ingest(
            actor=request.user, workflow=workflow, case_ref=body["case_ref"],
            tool_name=body["tool"], arguments=body["arguments"], text=body["text"],
            source=OutcomeSource.API, external_id=body["external_id"])
    except services.OutcomeConflict as exc:
        raise Conflict({"external_id": [str(exc)]}) from exc
    except DjangoPermissionDenied as exc:
        raise exceptions.PermissionDenied(str(exc)) from exc
    return Response(OutcomeSerializer(result.outcome).data,
                    status=status.HTTP_200_OK if result.replayed else status.HTTP_201_CREATED)
